"""Every part of a stage under FSDP on 2 CPU ranks (gloo), against the same stage on 1 rank.

Stage A runs FSDP1 ``SHARD_GRAD_OP`` with sharded checkpoints, as every GPU recipe does, with the long-context
switch and length warm-up, a loop schedule, a batch ramp, a token budget, in-training evaluation and the Hub
callback's export. Stage B starts from stage A's sharded checkpoint, upcycled from 2 to 4 layers, and trains the
exit gate (Stage II) under FSDP2. Each is matched against 1 rank with the same global batch: per-step losses,
tokens, schedules, evaluation scores (the 2 ranks split the questions and sum the counts) and exported weights.
`ouro export` of the sharded run writes the weights the Hub callback exported.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from spawn_ranks import one_process, read_steps, torchrun

from ouro.config import OuroConfig
from ouro.hub.export import export

SEQ, GLOBAL_BATCH, MICRO_TOKENS = 32, 4, 4 * 32
QUESTIONS = (
    11  # odd: rank 0 scores 6, rank 1 scores 5 (and one padded question, so both run as many forwards)
)
EVAL_TASK = "ouro_binding_d1"


def _recipe(tmp: Path, name: str, world: int, stage: str, init_from: str | None = None) -> Path:
    run = tmp / name
    layers, loops = (2, 3) if stage == "A" else (4, 3)
    model = asdict(OuroConfig.preset("tiny", vocab_size=4096, num_hidden_layers=layers, total_ut_steps=loops))
    model.pop("extra")
    if stage == "A":
        strategy = {
            "class_path": "ouro.distributed.OuroFSDPStrategy",
            "init_args": {"sharding_strategy": "SHARD_GRAD_OP"},
        }
        schedule = [
            {"class_path": "ouro.callbacks.TokenBudget", "init_args": {"max_tokens": 8 * MICRO_TOKENS}},
            {
                "class_path": "ouro.callbacks.WarmupStableDecay",
                "init_args": {"warmup_tokens": 2 * MICRO_TOKENS},
            },
            {
                "class_path": "ouro.callbacks.LongContextSchedule",
                "init_args": {
                    "rope_theta": [[0, 10000.0], [4 * MICRO_TOKENS, 40000.0]],
                    "warmup": [[0, SEQ // 2], [2 * MICRO_TOKENS, SEQ]],
                },
            },
            {
                "class_path": "ouro.callbacks.LoopSchedule",
                "init_args": {"steps": [[0, 2], [3 * MICRO_TOKENS, 3]]},
            },
            {
                "class_path": "ouro.callbacks.BatchSizeRamp",
                "init_args": {
                    "start_tokens_per_step": MICRO_TOKENS,
                    "end_tokens_per_step": 2 * MICRO_TOKENS,
                    "ramp_tokens": 2 * MICRO_TOKENS,
                },
            },
        ]
        every = 4 * MICRO_TOKENS
    else:
        strategy = {"class_path": "ouro.distributed.OuroFSDP2Strategy", "init_args": {"param_dtype": None}}
        schedule = [
            {"class_path": "ouro.callbacks.TokenBudget", "init_args": {"max_tokens": 3 * MICRO_TOKENS}}
        ]
        every = 10**9
    callbacks = [
        {"class_path": "spawn_ranks.StepRecorder", "init_args": {"out_dir": str(run / "steps")}},
        *schedule,
        {
            "class_path": "ouro.callbacks.EvalInTraining",
            "init_args": {
                "tasks": [EVAL_TASK],
                "every_tokens": every,
                "limit": QUESTIONS,
                "batch_size": 4,
                "tokenizer": "builtin",
                "exit_thresholds": [0.5],
            },
        },
        {"class_path": "spawn_ranks.EvalDump", "init_args": {"out_dir": str(run / "steps")}},
        {
            "class_path": "ouro.hub.callback.HubPushCallback",
            "init_args": {
                "push": False,
                "out_dir": str(run / "export"),
                "dtype": "float32",
                "tokenizer": "builtin",
            },
        },
    ]
    recipe = {
        "seed_everything": 0,
        "cpu_threads": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": world,
            "num_nodes": 1,
            "strategy": strategy if world > 1 else "auto",
            "max_steps": -1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(run),
            "use_distributed_sampler": False,  # FixedTokens splits rows over ranks itself, as litdata does
            "callbacks": callbacks,
        },
        "model": {
            "model": model,
            "optimizer": {"lr": 3e-3},
            "objective": "stage1" if stage == "A" else "stage2",
            "init_from": init_from,
        },
        "data": {
            "class_path": "test_distributed.FixedTokens",
            "init_args": {
                "vocab_size": 4096,
                "seq_len": SEQ,
                "global_batch": GLOBAL_BATCH,
                "steps_per_epoch": 12,
            },
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(tmp: Path, name: str, world: int, stage: str, init_from: str | None = None) -> dict:
    args = ["fit", "--config", str(_recipe(tmp, name, world, stage, init_from))]
    log = torchrun(args, nproc=world) if world > 1 else one_process(args)
    run = tmp / name
    evals = [json.loads((run / "steps" / f"eval{r}.json").read_text())[0] for r in range(world)]
    return {"run": run, "steps": read_steps(run / "steps"), "evals": evals, "log": log}


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp_pipeline")
    out = {("A", 2): _run(tmp, "a2", 2, "A"), ("A", 1): _run(tmp, "a1", 1, "A")}
    # Both stage-B runs start from the same sharded checkpoint (the 2-rank stage A's run directory).
    out[("B", 2)] = _run(tmp, "b2", 2, "B", str(tmp / "a2"))
    out[("B", 1)] = _run(tmp, "b1", 1, "B", str(tmp / "a2"))
    out["tmp"] = tmp
    return out


def _per_batch(steps: list[dict]) -> list[dict]:
    """One record per micro-batch of the world: the ranks' mean loss (equal rows per rank) and rank 0's rest."""
    world = steps[0]["world"]
    per_rank = len(steps) // world
    ranks = [steps[r * per_rank : (r + 1) * per_rank] for r in range(world)]  # read_steps: rank 0 first
    return [
        {**rows[0], "loss": sum(row["loss"] for row in rows) / world, "rows": None}
        for rows in zip(*ranks, strict=True)
    ]


@pytest.mark.parametrize("stage", ["A", "B"])
def test_two_sharded_ranks_train_the_stage_of_one_rank(stages, stage):
    two, one = _per_batch(stages[(stage, 2)]["steps"]), _per_batch(stages[(stage, 1)]["steps"])
    assert len(two) == len(one) > 0
    fields = ("step", "tokens_seen", "lr", "rope_theta", "loops", "accumulate")
    assert [[r[f] for f in fields] for r in two] == [[r[f] for f in fields] for r in one]
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in two]), torch.tensor([r["loss"] for r in one]), rtol=1e-4, atol=1e-5
    )
    if stage == "A":  # every schedule moved during the stage
        assert {r["rope_theta"] for r in two} == {10000.0, 40000.0}
        assert {r["loops"] for r in two} == {2, 3} and {r["accumulate"] for r in two} == {1, 2}
        assert two[-1]["tokens_seen"] == 8 * MICRO_TOKENS
    for world in (1, 2):
        complete = json.loads((stages[(stage, world)]["run"] / "stage_complete.json").read_text())
        assert complete["tokens"] == two[-1]["tokens_seen"]


@pytest.mark.parametrize("stage", ["A", "B"])
def test_eval_in_training_splits_questions_and_scores_like_one_rank(stages, stage):
    two, one = stages[(stage, 2)]["evals"], stages[(stage, 1)]["evals"][0]
    evaluations = len(one["history"])
    # A: every 512 tokens (at 512 and at 1024, where the budget ends it); B: at the end.
    assert evaluations == (2 if stage == "A" else 1)
    # The ranks scored every other question (6 and 5 of 11) and logged the same, summed, scores.
    assert [e["scored_here"] for e in two] == [6 * evaluations, 5 * evaluations]
    assert one["scored_here"] == QUESTIONS * evaluations
    for rank in two:
        for mine, reference in zip(rank["history"], one["history"], strict=True):
            assert mine["tokens"] == reference["tokens"]
            scores = {
                k: v for k, v in mine["metrics"].items() if k.startswith("eval/") and k != "eval/seconds"
            }
            expected = {k: v for k, v in reference["metrics"].items() if k in scores}
            assert len(scores) == 3 + 2  # step1..3, q0.5 and its depth
            assert scores == pytest.approx(expected, abs=1e-9)


def _export(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_export_of_a_sharded_run_and_the_hub_callback(stages):
    tmp = stages["tmp"]
    checkpoint = stages[("A", 2)]["run"] / "checkpoints" / "last.ckpt"
    assert (
        checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2
    )  # sharded, as the recipes write it
    export(str(stages[("A", 2)]["run"]), str(tmp / "exported"), tokenizer="builtin", dtype="float32")
    by_export, by_callback = _export(tmp / "exported"), _export(stages[("A", 2)]["run"] / "export")
    assert by_export.keys() == by_callback.keys()
    for name, value in by_callback.items():
        assert torch.equal(by_export[name], value), name
    one = _export(stages[("A", 1)]["run"] / "export")
    for name, value in one.items():  # AdamW amplifies rounding differences to a small fraction of lr
        torch.testing.assert_close(by_callback[name], value, rtol=1e-3, atol=1e-4, msg=name)


def test_upcycled_gate_training_from_a_sharded_checkpoint(stages):
    two, one = _export(stages[("B", 2)]["run"] / "export"), _export(stages[("B", 1)]["run"] / "export")
    assert sum(k.startswith("model.layers.") for k in two) == 2 * sum(
        k.startswith("model.layers.0.") or k.startswith("model.layers.1.") for k in two
    )
    a_final = _export(stages[("A", 2)]["run"] / "export")
    for name, value in two.items():
        torch.testing.assert_close(value, one[name], rtol=1e-4, atol=1e-6, msg=name)
        layer = name.split(".")
        if name.startswith("model.early_exit_gate."):
            assert not torch.equal(value, a_final[name]), "the gate trained"
        elif name.startswith("model.layers."):  # layer i of 4 is a frozen copy of layer i % 2 of stage A
            source_name = ".".join([*layer[:2], str(int(layer[2]) % 2), *layer[3:]])
            assert torch.equal(value, a_final[source_name]), name
        else:
            assert torch.equal(value, a_final[name]), name
