"""`EvalInTraining` with an lm-eval task under FSDP on 2 CPU ranks (gloo), against the same stage on 1 rank.

The 2 ranks split the task's documents with lm-eval's own distributed evaluation (each rank scores every other
document through the strategy's wrapped module, so FSDP1 and FSDP2 gather their parameters), rank 0 computes
the metrics and every rank logs them: they are the 1-rank metrics, within floating-point tolerance. Before,
the network was called around the strategy's wrapper: FSDP1 failed (``'weight' must be 2-D``), FSDP2 failed
(mixed Tensor and DTensor). What cannot be split (generation, fewer documents than ranks) is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import write_local_tasks
from spawn_ranks import one_process, torchrun

from ouro.callbacks import EvalInTraining
from ouro.config import OuroConfig
from ouro.eval.runner import check_splittable, load_tasks, task_manager

TASK = "toy_sharded_choice"
DOCS = 21  # odd: rank 0 scores 11 documents, rank 1 scores 10
WORDS = ["red", "blue", "green", "cold", "hot", "wet", "dry", "one", "two", "three", "tree", "stone"]
STRATEGIES = {
    "fsdp1": {
        "class_path": "ouro.distributed.OuroFSDPStrategy",
        "init_args": {"sharding_strategy": "SHARD_GRAD_OP"},
    },
    "fsdp2": {"class_path": "ouro.distributed.OuroFSDP2Strategy", "init_args": {"param_dtype": None}},
}


def _task_folder(folder: Path) -> Path:
    docs = []
    for i in range(DOCS):  # varied lengths, so the ranks' batches differ from one rank's
        words = [WORDS[(i * 5 + k) % len(WORDS)] for k in range(2 + i % 4)]
        choices = [WORDS[(i + k) % len(WORDS)] for k in range(3)]
        docs.append({"question": " ".join(words) + " is", "choices": choices, "answer": i % 3})
    return write_local_tasks(folder, docs, TASK, "toy_sharded_answer", max_gen_toks=2)


def _recipe(tmp: Path, name: str, world: int, strategy: str, tasks: Path) -> Path:
    run = tmp / name
    model = asdict(OuroConfig.preset("tiny", vocab_size=4096, num_hidden_layers=2, total_ut_steps=3))
    model.pop("extra")
    recipe = {
        "seed_everything": 0,
        "cpu_threads": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": world,
            "num_nodes": 1,
            "strategy": STRATEGIES[strategy] if world > 1 else "auto",
            "max_steps": 2,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(run),
            "use_distributed_sampler": False,  # FixedTokens splits rows over ranks itself
            "callbacks": [
                {
                    "class_path": "ouro.callbacks.EvalInTraining",
                    "init_args": {
                        "tasks": [TASK],
                        "every_tokens": 10**9,  # once, when training ends
                        "limit": DOCS,
                        "batch_size": 4,
                        "tokenizer": "builtin",
                        "include_path": str(tasks),
                        "exit_thresholds": [0.5],
                    },
                },
                {"class_path": "spawn_ranks.EvalDump", "init_args": {"out_dir": str(run / "eval")}},
            ],
        },
        "model": {"model": model, "optimizer": {"lr": 3e-3}},
        "data": {
            "class_path": "test_distributed.FixedTokens",
            "init_args": {"vocab_size": 4096, "seq_len": 32, "global_batch": 4, "steps_per_epoch": 4},
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(tmp: Path, name: str, world: int, strategy: str, tasks: Path) -> list[dict]:
    args = ["fit", "--config", str(_recipe(tmp, name, world, strategy, tasks))]
    torchrun(args, nproc=world) if world > 1 else one_process(args)
    return [json.loads((tmp / name / "eval" / f"eval{r}.json").read_text())[0] for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("eval_sharded")
    tasks = _task_folder(tmp_path_factory.mktemp("tasks"))
    with pytest.MonkeyPatch.context() as patch:  # the ranks inherit it: nothing may download
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            patch.setenv(name, "1")
        out = {"one": _run(tmp, "one", 1, "fsdp1", tasks)[0]}
        for strategy in STRATEGIES:
            out[strategy] = _run(tmp, strategy, 2, strategy, tasks)
    return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_lm_eval_task_split_over_sharded_ranks_scores_like_one_rank(runs, strategy):
    one, two = runs["one"], runs[strategy]
    reference = one["history"][-1]["metrics"]
    expected = {k: v for k, v in reference.items() if k.startswith(f"eval/{TASK}/")}
    assert len(expected) == 3 + 2  # step1..3, q0.5 and its mean depth
    for rank in two:
        (evaluation,) = rank["history"]
        scores = {k: v for k, v in evaluation["metrics"].items() if k.startswith(f"eval/{TASK}/")}
        assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Each rank scored every other document (11 and 10 of 21); one rank scored them all.
    assert one["scored_here"] == DOCS
    assert [rank["scored_here"] for rank in two] == [(DOCS + 1) // 2, DOCS // 2]


@pytest.mark.usefixtures("hf_offline")
def test_what_cannot_be_split_over_ranks_is_refused_in_one_line(tmp_path):
    tasks = _task_folder(tmp_path)
    callback = EvalInTraining(
        tasks=[TASK, "toy_sharded_answer"], tokenizer="builtin", include_path=str(tasks), limit=4
    )
    callback.setup(SimpleNamespace(world_size=1), None, "fit")  # one process generates as before
    with pytest.raises(ValueError, match=r"toy_sharded_answer cannot be split over 2 ranks .* `ouro eval`"):
        callback.setup(SimpleNamespace(world_size=2), None, "fit")
    loaded = load_tasks(task_manager(str(tasks)), [TASK])["tasks"]
    check_splittable(loaded, 2, 2)
    with pytest.raises(ValueError, match=f"{TASK} has 2 document.* fewer than the 3 ranks"):
        check_splittable(loaded, 2, 3)
