"""A run killed and resumed draws one unbroken per-step series in `ouro plot`: no step up to the resumed
checkpoint is missing (rows the CSV logger buffered at the kill), and a step logged by both attempts counts once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import TINY_RESUMABLE_RECIPE

from ouro.plot import find_metrics_files, read_metrics, series

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _ouro(fault: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "reliability_helpers", fault, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_killed_and_resumed_run_plots_every_step_once(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RESUMABLE_RECIPE.format(steps=6, trainer="  log_every_n_steps: 1\n"))
    args = [
        "fit",
        "--config",
        str(recipe),
        "--trainer.default_root_dir",
        "run",
        "--checkpoint_every_n_steps",
        "2",
    ]
    # 1. Killed at the start of step 4: steps 1-3 are logged, step 2's checkpoint is resumed, so step 3 twice.
    first = _ouro("kill_at_step:3", args, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    # 2. Killed while writing last.ckpt at step 4, after step-00000004.ckpt (its second checkpoint write): the
    #    rerun resumes from step 4, whose row is logged only after its checkpoints are written.
    second = _ouro("kill_in_checkpoint:2", args, tmp_path)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    third = _ouro("none", args, tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "step-00000004.ckpt" in third.stderr

    rows = read_metrics(find_metrics_files(tmp_path / "run"))
    tokens, losses = series(rows, "train/loss")
    tokens_per_step = 2 * 8
    assert tokens == [step * tokens_per_step for step in range(1, 7)], "every step, each once"
    # The rows are the right ones: an uninterrupted run logs the same losses (resume is exact).
    reference = _ouro("none", [*args[:4], "ref", *args[5:]], tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = series(read_metrics(find_metrics_files(tmp_path / "ref")), "train/loss")
    assert (tokens, losses) == (expected[0], pytest.approx(expected[1], rel=1e-6))
