"""The whole Ouro diagram at CPU size: `ouro pipeline recipes/pipelines/tiny.yaml`, both branches and the gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

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


def test_tiny_pipeline_runs_both_branches_end_to_end(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = tmp_path / "runs" / "tiny"
    branches = {"1.4b": runs, "2.6b": runs / "ouro-2.6b"}
    for name, root in branches.items():
        for stage in STAGES[1:]:
            assert (root / stage / "stage_complete.json").is_file(), (name, stage)
    assert (runs / "warmup" / "stage_complete.json").is_file()

    warmup = _last(runs / "warmup")["ouro"]
    assert warmup["config"]["total_ut_steps"] == 8 and warmup["config"]["rope_theta"] == 1e4
    for name, root in branches.items():
        layers = 2 if name == "1.4b" else 4
        for stage, rope in [("stable", 1e4), ("ct_annealing", 4e4), ("longct", 1e6), ("midtraining", 1e6)]:
            meta = _last(root / stage)["ouro"]
            assert meta["config"]["num_hidden_layers"] == layers and meta["config"]["total_ut_steps"] == 4
            assert meta["config"]["rope_theta"] == rope
        # Provenance accumulates stage after stage, each with its own token count.
        sft = _last(root / "reasoning_sft")["ouro"]
        assert [p["stage"] for p in sft["provenance"]] == STAGES[:-1]
        assert sft["tokens_seen"] == 20480
        # Gate training changed the exit gate and nothing else.
        before = _last(root / "midtraining")["state_dict"]
        after = _last(root / "gate")["state_dict"]
        changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
        assert changed == ["net.model.early_exit_gate.bias", "net.model.early_exit_gate.weight"]
    assert "after upcycling, last-step validation CE" in result.stderr + result.stdout
    # In-training evaluation (EvalInTraining) logged the built-in suite at every exit step and under Q-exit.
    header = next((runs / "stable").glob("**/metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"eval/ouro_binding/step1", "eval/ouro_binding/step4", "eval/ouro_binding/q0.9/depth"} <= set(
        header
    )

    again = _run(tmp_path)  # every stage is complete: nothing reruns
    assert again.returncode == 0 and again.stdout.count("skipped") == 13
