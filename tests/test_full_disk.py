"""A full disk while ``ouro`` writes a checkpoint or an export: one line naming the file and the space needed, exit
1, and the previous checkpoint or export intact; a short free space is warned about before the checkpoint.

The disk fills up by injection (``ENOSPC`` partway through a write) and, where a small tmpfs can be mounted, for
real.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer
from reliability_helpers import (
    digest,
    failing_checkpoint_writes,
    fit_args,
    fit_in_process,
    load_checkpoint,
    write_recipe,
)

from ouro.checkpoint_io import AtomicCheckpointIO
from ouro.cli import main
from ouro.errors import WriteError


def _checkpoint_to_export(folder: Path, path: Path) -> Path:
    """A checkpoint as `ouro fit` writes it (with a tokenizer, so that it exports) at ``folder / path``."""
    tokenizer = write_word_tokenizer(folder / "tokenizer.json")
    return write_fit_checkpoint(
        folder / path,
        build_tiny_model(gate_std=0.5),
        tokenizer=tokenizer,
        tokens_seen=5_000_000,
        global_step=7,
    )


def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4096)}, "global_step": 1}, path)
    before = digest(path)
    monkeypatch.setattr("ouro.checkpoint_io.atomic_open", failing_checkpoint_writes(on_write=1))
    with pytest.raises(WriteError) as raised:
        io.save_checkpoint({"state_dict": {"w": torch.ones(4096)}, "global_step": 2}, path)
    message = str(raised.value)
    # The space needed is the larger of the tensors' bytes (16 KiB) and the size of the previous file.
    needed = max(4096 * 4, path.stat().st_size) / 1024
    assert f"{path}: No space left on device (needs about {needed:.1f} KiB" in message
    assert "the previous last.ckpt is intact" in message and raised.value.errno == errno.ENOSPC
    assert digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_short_free_space_warns_before_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("ouro.checkpoint_io.free_bytes", lambda directory: 20_000)
    with pytest.warns(
        UserWarning, match=r"only 19\.5 KiB free .* needs about 16\.0 KiB: the next checkpoint"
    ):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4096)}}, tmp_path / "a.ckpt")


def test_full_disk_during_fit_is_one_line_exit_1_and_the_last_checkpoint_survives(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    # Writes: step-2 (1), last at step 2 (2), step-4 (3), last at step 4 (4): the disk fills up during the 4th.
    monkeypatch.setattr("ouro.checkpoint_io.atomic_open", failing_checkpoint_writes(on_write=4))
    with pytest.raises(SystemExit) as exited:
        main(fit_args(write_recipe(tmp_path, 6), run, "--checkpoint_every_n_steps", "2"))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("ouro: error:")]
    assert "could not write checkpoint" in line and "last.ckpt: No space left on device" in line
    assert "the previous last.ckpt is intact" in line and "Traceback" not in err
    checkpoints = run / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt",
        "step-00000002.ckpt",
        "step-00000004.ckpt",
    ]
    assert not (run / "stage_complete.json").exists()


def test_full_disk_during_export_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    source = _checkpoint_to_export(tmp_path, Path("run") / "checkpoints" / "last.ckpt")
    out = tmp_path / "export"
    main(["export", str(source), str(out)])
    before = {p.name: digest(p) for p in out.iterdir()}
    (tmp_path / f".tmp-export.{'0' * 8}").mkdir()  # the hidden partial folder of an interrupted export

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(SystemExit) as exited:
        main(["export", str(source), str(out), "--overwrite", "true"])
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"ouro: error: could not write export {out}: No space left on device (needs about")
    assert f"the previous export {out} is intact" in line
    assert {p.name: digest(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run", "tokenizer.json"]


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size)``: a real tmpfs of ``size`` bytes (needs root with mount rights; skipped elsewhere)."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / "small"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a small tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_real_full_disk_during_export_keeps_the_previous_export(tmp_path, small_filesystem, capsys):
    """The same guarantee on a real filesystem that fills up: the second export needs room for both copies."""
    source = _checkpoint_to_export(tmp_path, Path("last.ckpt"))
    main(["export", str(source), str(tmp_path / "measure")])
    size = sum(p.stat().st_size for p in (tmp_path / "measure").iterdir())
    out = small_filesystem(size * 3 // 2) / "export"  # room for one export, not for two
    main(["export", str(source), str(out)])
    before = {p.name: digest(p) for p in out.iterdir()}
    with pytest.raises(SystemExit) as exited:
        main(["export", str(source), str(out), "--overwrite", "true"])
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"ouro: error: could not write export {out}: No space left on device (needs about")
    assert line.endswith(f"the previous export {out} is intact")
    assert {p.name: digest(p) for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["export"], "the partial export is removed"


def test_real_full_disk_during_fit_warns_first_and_keeps_last_checkpoint(tmp_path, small_filesystem, capsys):
    recipe = write_recipe(tmp_path, 1)
    fit_in_process(*fit_args(recipe, tmp_path / "measure"))
    size = (tmp_path / "measure" / "checkpoints" / "last.ckpt").stat().st_size
    run = (
        small_filesystem(size * 5 // 2) / "run"
    )  # step 1 writes two checkpoints; step 2's first does not fit
    with pytest.warns(
        UserWarning, match="free on the filesystem of .*: the next checkpoint will probably not fit"
    ):
        with pytest.raises(SystemExit) as exited:
            main(fit_args(write_recipe(tmp_path, 3), run, "--checkpoint_every_n_steps", "1"))
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"ouro: error: could not write checkpoint {run}/checkpoints/step-00000002.ckpt: No space"
    )
    assert line.endswith("no partial file was left behind; rerun to resume")
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-00000001.ckpt"]
