"""The whole Ouro diagram at CPU size: `ouro pipeline recipes/pipelines/tiny.yaml`, both branches and the gate.

The pipeline runs once per module (`pipeline`); each test checks one of its guarantees on that run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ouro.cli import main

ROOT = Path(__file__).parent.parent
STAGES = ["warmup", "stable", "ct_annealing", "longct", "midtraining", "reasoning_sft", "gate"]


def _run(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ouro.cli", "pipeline", "recipes/pipelines/tiny.yaml"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The folder the tiny pipeline ran in, and its finished process (it succeeded)."""
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    result = _run(folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder, result


@pytest.fixture(scope="module")
def branches(pipeline) -> dict[str, Path]:
    """Each branch's run folder: the 1.4B-style branch keeps 2 layers, the 2.6B-style one upcycles to 4."""
    runs = pipeline[0] / "runs" / "tiny"
    return {"1.4b": runs, "2.6b": runs / "ouro-2.6b"}


def test_every_stage_of_both_branches_completes(pipeline, branches):
    for name, root in branches.items():
        for stage in STAGES[1:]:
            assert (root / stage / "stage_complete.json").is_file(), (name, stage)
    assert (branches["1.4b"] / "warmup" / "stage_complete.json").is_file()


def test_each_stage_trains_its_layers_loops_and_rope_base(branches):
    warmup = _last(branches["1.4b"] / "warmup")["ouro"]
    assert warmup["config"]["total_ut_steps"] == 8 and warmup["config"]["rope_theta"] == 1e4
    for name, root in branches.items():
        layers = 2 if name == "1.4b" else 4
        for stage, rope in [("stable", 1e4), ("ct_annealing", 4e4), ("longct", 1e6), ("midtraining", 1e6)]:
            meta = _last(root / stage)["ouro"]
            assert meta["config"]["num_hidden_layers"] == layers and meta["config"]["total_ut_steps"] == 4
            assert meta["config"]["rope_theta"] == rope


def test_provenance_accumulates_stage_after_stage(branches):
    for root in branches.values():
        sft = _last(root / "reasoning_sft")["ouro"]
        assert [p["stage"] for p in sft["provenance"]] == STAGES[:-1]
        assert sft["tokens_seen"] == 20480


def test_gate_training_changes_the_exit_gate_and_nothing_else(branches):
    for root in branches.values():
        before = _last(root / "midtraining")["state_dict"]
        after = _last(root / "gate")["state_dict"]
        changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
        assert changed == ["net.model.early_exit_gate.bias", "net.model.early_exit_gate.weight"]


def test_upcycling_reports_the_validation_ce_it_starts_from(pipeline):
    result = pipeline[1]
    assert "after upcycling, last-step validation CE" in result.stderr + result.stdout


def test_in_training_evaluation_logs_every_exit_step_and_q_exit(branches):
    """EvalInTraining logged the built-in suite at every exit step and under Q-exit."""
    header = next((branches["1.4b"] / "stable").glob("**/metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"eval/ouro_binding/step1", "eval/ouro_binding/step4", "eval/ouro_binding/q0.9/depth"} <= set(
        header
    )


def test_a_complete_pipeline_reruns_nothing(pipeline, monkeypatch, capfd):
    """Every stage is complete: the same command (in this process: no stage starts) skips all 13."""
    monkeypatch.chdir(pipeline[0])
    capfd.readouterr()
    main(["pipeline", "recipes/pipelines/tiny.yaml"])  # a failure would raise SystemExit
    assert capfd.readouterr().out.count("skipped") == 13
