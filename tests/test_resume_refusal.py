"""A run directory that has held a checkpoint never restarts from step 0 unless told to (``--restart true``), and
a checkpoint moved aside as unreadable stays usable through ``--ckpt_path``."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import fit_args, load_checkpoint, write_recipe

from ouro.cli import main


def _fit(tmp_path: Path, run: Path, steps: int, *extra: str) -> None:
    main(fit_args(write_recipe(tmp_path, steps), run, *extra))


def _step(path: Path) -> int:
    return load_checkpoint(path)["global_step"]


def _refused(capsys, call) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_refused_resume_never_becomes_a_silent_restart(tmp_path, capsys):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    _fit(tmp_path, run, 2)
    last = checkpoints / "last.ckpt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 3])  # every checkpoint of the run is unreadable

    err = _refused(capsys, lambda: _fit(tmp_path, run, 4))
    assert "no readable checkpoint" in err and "--restart true" in err
    (aside,) = checkpoints.glob("last.ckpt.unreadable-*")

    # The same command again (a retry loop, a SLURM requeue): refused again, nothing trained, nothing written.
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    err = _refused(capsys, lambda: _fit(tmp_path, run, 4))
    lines = [line for line in err.splitlines() if line.startswith("ouro")]
    assert len(lines) == 1, err
    assert aside.name in lines[0] and "--ckpt_path" in lines[0] and "--restart true" in lines[0]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert sorted(p.name for p in checkpoints.iterdir()) == [aside.name]

    # Told to: the stage starts again from step 0, and what was moved aside is kept.
    _fit(tmp_path, run, 3, "--restart", "true")
    assert _step(last) == 3
    assert aside.exists()


def test_restart_never_discards_a_readable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _fit(tmp_path, run, 2)
    capsys.readouterr()
    _fit(tmp_path, run, 3, "--restart", "true")
    assert "resuming" in capsys.readouterr().err
    assert _step(run / "checkpoints" / "last.ckpt") == 3


def test_a_checkpoint_moved_aside_resumes_through_ckpt_path(tmp_path, capsys):
    """A checkpoint the check wrongly took for damaged (here: renamed the way the check renames) still resumes
    with --ckpt_path, also with --weights_only false for a file the user trusts."""
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    _fit(tmp_path, run, 2)
    aside = checkpoints / "last.ckpt.unreadable-20260101T000000"
    (checkpoints / "last.ckpt").rename(aside)
    err = _refused(capsys, lambda: _fit(tmp_path, run, 3))
    assert aside.name in err
    _fit(tmp_path, run, 3, "--ckpt_path", str(aside), "--weights_only", "false")
    assert _step(checkpoints / "last.ckpt") == 3
    assert "resuming" in capsys.readouterr().err or _step(checkpoints / "last.ckpt") == 3
