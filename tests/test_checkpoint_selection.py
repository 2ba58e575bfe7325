"""Which checkpoint a resume reads: a truncated last.ckpt is moved aside (never deleted) for the newest readable
one, unreadable ones are each named, a checkpoint ``weights_only`` refuses is not loaded, and a sharded checkpoint
folder counts only once it is complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from reliability_helpers import age_file, tiny_checkpoint

from ouro.checkpoint_io import SHARDED_MARKER, AtomicShardedSave
from ouro.errors import ResumeError
from ouro.resume import UntrustedCheckpointError, inspect_checkpoint, newest_readable_checkpoint


def test_truncated_last_checkpoint_is_moved_aside_and_the_newest_good_one_used(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    older = tiny_checkpoint(folder / "step-00000002.ckpt", 2)
    age_file(older, 20)
    good = tiny_checkpoint(folder / "step-00000004.ckpt", 4)
    age_file(good, 10)
    last = tiny_checkpoint(folder / "last.ckpt", 6)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (folder / ".tmp-last.ckpt.1234abcd").write_bytes(b"partial")

    found = newest_readable_checkpoint(tmp_path, move_aside=True)
    assert found.path == good and found.checkpoint["global_step"] == 4
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "last.ckpt is unreadable" in err
        and "moved it to last.ckpt.unreadable-" in err
    )
    aside = list(folder.glob("last.ckpt.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0, "moved aside, never deleted"
    assert not list(folder.glob(".tmp-*")), "leftovers of interrupted writes are removed"

    # Without moving (init_from reads another stage's folder): skipped with one line, left where it is.
    tiny_checkpoint(folder / "last.ckpt", 6).write_bytes(b"PK\x03\x04 truncated")
    assert newest_readable_checkpoint(tmp_path).path == good
    assert (folder / "last.ckpt").exists()


def test_no_readable_checkpoint_names_every_one(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    (folder / "step-00000002.ckpt").write_bytes(b"garbage")
    age_file(folder / "step-00000002.ckpt", 10)
    with pytest.raises(ResumeError, match=r"no readable checkpoint .*last\.ckpt, step-00000002\.ckpt"):
        newest_readable_checkpoint(tmp_path)
    err = capsys.readouterr().err  # each one's reason on its own line
    assert re.search(r"last\.ckpt is unreadable \(.+\)", err) and "step-00000002.ckpt is unreadable" in err
    assert newest_readable_checkpoint(tmp_path / "elsewhere") is None


def test_checkpoint_refused_by_weights_only_is_named_and_not_loaded(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "global_step": 1, "extra": ValueError("pickled object")}, path)
    with pytest.raises(
        UntrustedCheckpointError,
        match=r"last\.ckpt was not loaded: .*weights_only=True\) refuses it \(it holds a pickled [a-z]+\.ValueError",
    ):
        newest_readable_checkpoint(tmp_path, move_aside=True)
    assert path.exists(), "an untrusted checkpoint is not moved: it is not damaged"


def test_sharded_folder_counts_only_with_its_marker(tmp_path):
    folder = tmp_path / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    torch.save({"global_step": 3, "loops": {}}, folder / "meta.pt")
    assert "did not finish" in inspect_checkpoint(folder).problem
    (folder / SHARDED_MARKER).write_text("{}\n")
    assert inspect_checkpoint(folder).problem is None


class _FakeShardedParent:
    """What a sharded strategy does: every rank writes files into the folder it is given."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        Path(filepath).mkdir(parents=True, exist_ok=True)
        for name, value in checkpoint.items():
            torch.save(value, Path(filepath) / f"{name}.pt")


class _FakeShardedStrategy(AtomicShardedSave, _FakeShardedParent):
    _state_dict_type = "sharded"
    global_rank, world_size = 0, 1

    def __init__(self):
        self.barriers = []

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        self.barriers.append(name)
        # Mid-save: the final folder still holds the previous complete checkpoint.
        if name == "ouro_sharded_checkpoint_written":
            assert not (self.final / "new.pt").exists()


def test_sharded_checkpoint_appears_complete_or_not_at_all(tmp_path):
    strategy = _FakeShardedStrategy()
    strategy.final = tmp_path / "last.ckpt"
    strategy.save_checkpoint({"old": torch.zeros(2)}, strategy.final)
    strategy.save_checkpoint({"new": torch.ones(2)}, strategy.final)
    assert sorted(p.name for p in strategy.final.iterdir()) == sorted([SHARDED_MARKER, "new.pt"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no staging folder is left"
    assert strategy.barriers.count("ouro_sharded_checkpoint_in_place") == 2
