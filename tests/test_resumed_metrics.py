"""A run killed and resumed draws one unbroken per-step series in `ouro plot`: no step up to the resumed
checkpoint is missing (rows the CSV logger buffered at the kill), and a step logged by both attempts counts once."""

from __future__ import annotations

import signal

import pytest
from reliability_helpers import fit_args, fit_in_process, ouro_with_fault, write_recipe

from ouro.plot import find_metrics_files, read_metrics, series


def test_a_killed_and_resumed_run_plots_every_step_once(tmp_path, capfd):
    recipe = write_recipe(tmp_path, 6, trainer="  log_every_n_steps: 1\n")
    args = fit_args(recipe, tmp_path / "run", "--checkpoint_every_n_steps", "2")
    # 1. Killed at the start of step 4: steps 1-3 are logged, step 2's checkpoint is resumed, so step 3 twice.
    first = ouro_with_fault("kill_at_step:3", args, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    # 2. Killed while writing last.ckpt at step 4, after step-00000004.ckpt (its second checkpoint write): the
    #    rerun resumes from step 4, whose row is logged only after its checkpoints are written.
    second = ouro_with_fault("kill_in_checkpoint:2", args, tmp_path)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    capfd.readouterr()
    fit_in_process(*args)  # the rerun (in this process: the kills above needed their own)
    assert "step-00000004.ckpt" in capfd.readouterr().err

    rows = read_metrics(find_metrics_files(tmp_path / "run"))
    tokens, losses = series(rows, "train/loss")
    tokens_per_step = 2 * 8
    assert tokens == [step * tokens_per_step for step in range(1, 7)], "every step, each once"
    # The rows are the right ones: an uninterrupted run logs the same losses (resume is exact).
    fit_in_process(*fit_args(recipe, tmp_path / "ref", "--checkpoint_every_n_steps", "2"))
    expected = series(read_metrics(find_metrics_files(tmp_path / "ref")), "train/loss")
    assert (tokens, losses) == (expected[0], pytest.approx(expected[1], rel=1e-6))
