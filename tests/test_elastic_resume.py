"""Elastic resume: a stage checkpointed on N ranks continues on M ranks, and with another ``num_workers``.

One epoch of a litdata source is trained in a chain of `ouro fit` runs on one run directory, each resuming the
previous run's mid-epoch checkpoint (``--ckpt_path .../step-N.ckpt``, as a pre-empted job would):

* DDP: 2 ranks -> 1 rank -> 1 rank with ``num_workers`` 1 -> 2 -> 2 ranks, to the end of the epoch. Row
  identities (each row's token ids; the source's rows are distinct) show every row of the epoch trained exactly
  once; tokens, learning rate, RoPE base and the token budget follow the global token count.
* Sharded checkpoints, by their short strategy names: FSDP1 (``fsdp``) and FSDP2 (``fsdp2``), each
  2 -> 1 -> 2 ranks, give the DDP chain's losses step for step where the topologies agree, and see no row twice.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from litdata import StreamingDataset, TokensLoader
from spawn_ranks import one_process, read_steps, torchrun

from ouro.config import OuroConfig
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.errors import ResumeError
from ouro.resume import check_resume_settings

SEQ, BATCH, DOCS = 16, 2, 10  # 10 documents make 64 distinct rows of 16 + 1 tokens
WORDS = "alpha beta gamma delta loop model token stream shard chunk exit gate step rank node".split()
PEAK_LR, WARMUP_TOKENS, THETA_SWITCH = 3e-3, 256, 512
#: (ranks, num_workers, max_steps) of each run; every run but the first resumes the previous run's last step.
DDP_CHAIN = [(2, 1, 2), (1, 1, 4), (1, 2, 6), (2, 2, -1)]
FSDP_CHAIN = [(2, 1, 2), (1, 1, 4), (2, 1, 6)]  # FSDP1 and FSDP2 alike


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A prepared litdata source, its vocabulary and every row of its epoch (read in one process, in order)."""
    root = tmp_path_factory.mktemp("elastic")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + f" {i}" for i in range(DOCS)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(train_tokenizer([root / "corpus.jsonl"], vocab_size=200).to_str())
    prepare(
        [str(root / "corpus.jsonl")],
        str(root / "shards"),
        tokenizer=str(tokenizer),
        num_workers=1,
        chunk_tokens=400,
    )
    blocks = StreamingDataset(
        str(root / "shards"), item_loader=TokensLoader(block_size=SEQ + 1), shuffle=False
    )
    rows = [tuple(blocks[i][:-1].tolist()) for i in range(len(blocks))]
    assert len(set(rows)) == len(rows) == 64, (
        "the test needs 64 distinct rows (a multiple of every global batch)"
    )
    vocab = json.loads((root / "shards" / "manifest.json").read_text())["vocab_size"]
    return {"dir": root / "shards", "rows": rows, "vocab": vocab, "root": root}


def _recipe(path: Path, run: Path, source: dict, world: int, workers: int, max_steps: int, strategy) -> Path:
    model = asdict(OuroConfig.preset("tiny", vocab_size=source["vocab"], total_ut_steps=2))
    model.pop("extra")
    recipe = {
        "seed_everything": 0,
        "cpu_threads": 1,
        "checkpoint_every_n_steps": 2,
        "trainer": {
            "accelerator": "cpu",
            "devices": world,
            "num_nodes": 1,
            "strategy": strategy,
            "max_steps": max_steps,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(run),
            "callbacks": [
                {"class_path": "spawn_ranks.StepRecorder", "init_args": {"out_dir": str(run / "steps")}},
                {
                    "class_path": "ouro.callbacks.TokenBudget",
                    "init_args": {"max_tokens": len(source["rows"]) * SEQ},
                },
                {
                    "class_path": "ouro.callbacks.WarmupStableDecay",
                    "init_args": {"warmup_tokens": WARMUP_TOKENS},
                },
                {
                    "class_path": "ouro.callbacks.LongContextSchedule",
                    "init_args": {"rope_theta": [[0, 10000.0], [THETA_SWITCH, 40000.0]]},
                },
            ],
        },
        "model": {"model": model, "optimizer": {"lr": PEAK_LR}},
        "data": {
            "class_path": "ouro.data.PretrainDataModule",
            "init_args": {
                "sources": [str(source["dir"])],
                "val_source": None,
                "seq_len": SEQ,
                "batch_size": BATCH,
                "num_workers": workers,
                "seed": 7,
            },
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _chain(
    tmp: Path,
    source: dict,
    chain: list[tuple[int, int, int]],
    strategy: str | dict | None,
    flag: str | None = None,
) -> dict:
    """Run ``chain`` on one run directory; the steps recorded, and each run's output. ``flag``: the resumed runs
    get ``--trainer.strategy FLAG`` on the command line instead of the recipe's strategy."""
    run, logs, previous = tmp / "run", [], None
    for world, workers, max_steps in chain:
        spec = strategy or ("ddp" if world > 1 else "auto")
        recipe = _recipe(tmp / f"run-{max_steps}.yaml", run, source, world, workers, max_steps, spec)
        args = ["fit", "--config", str(recipe)]
        if previous is not None:
            args += ["--ckpt_path", str(run / "checkpoints" / f"step-{previous:08d}.ckpt")]
            args += ["--trainer.strategy", flag] if flag else []
        logs.append(torchrun(args, nproc=world) if world > 1 else one_process(args))
        previous = max_steps
    return {"steps": read_steps(run / "steps"), "logs": logs, "run": run}


@pytest.fixture(scope="module")
def ddp_chain(tmp_path_factory, source) -> dict:
    return _chain(tmp_path_factory.mktemp("ddp"), source, DDP_CHAIN, None)


def _rows(steps: list[dict]) -> Counter:
    return Counter(tuple(row) for step in steps for row in step["rows"])


def _losses(steps: list[dict]) -> dict[int, float]:
    """Loss of each global step: the mean of the ranks' losses (they see equally many tokens)."""
    by_step: dict[int, list[float]] = {}
    for step in steps:
        by_step.setdefault(step["step"], []).append(step["loss"])
    return {step: sum(values) / len(values) for step, values in sorted(by_step.items())}


def test_every_row_of_the_epoch_once_across_world_sizes_and_workers(ddp_chain, source):
    seen = _rows(ddp_chain["steps"])
    assert max(seen.values()) == 1, [row for row, n in seen.items() if n > 1][:2]
    assert sorted(seen) == sorted(source["rows"])
    worlds = {step["step"]: step["world"] for step in ddp_chain["steps"]}
    assert [worlds[s] for s in (1, 2, 3, 4, 5, 6, 7)] == [2, 2, 1, 1, 1, 1, 2]
    assert max(worlds) == 6 + (64 - 8 - 4 - 4) // (2 * BATCH)  # the last run trained to the epoch's end


def test_schedules_and_budget_follow_the_global_token_count(ddp_chain, source):
    steps = {step["step"]: step for step in ddp_chain["steps"]}  # ranks agree; any rank's row will do
    tokens = 0
    for number in sorted(steps):
        step = steps[number]
        tokens += step["world"] * BATCH * SEQ
        assert step["tokens_seen"] == tokens, number
        expected_lr = PEAK_LR * min(tokens / WARMUP_TOKENS, 1.0)  # linear warmup, then constant
        assert step["lr"] == pytest.approx(expected_lr, rel=1e-9), number
        assert step["rope_theta"] == (
            10000.0 if tokens - step["world"] * BATCH * SEQ < THETA_SWITCH else 40000.0
        )
    complete = json.loads((ddp_chain["run"] / "stage_complete.json").read_text())
    assert complete["tokens"] == tokens == len(source["rows"]) * SEQ
    assert complete["global_step"] == max(steps)


def test_resume_says_what_changed_in_one_line(ddp_chain):
    said = [[line for line in log.splitlines() if line.startswith("ouro: ")] for log in ddp_chain["logs"]]
    assert said[1] == ["ouro: checkpoint written by 2 ranks, resuming on 1: data position restriped"]
    assert said[2] == ["ouro: data.num_workers 1 -> 2: data position restriped"]
    assert said[3] == ["ouro: checkpoint written by 1 rank, resuming on 2: data position restriped"]


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp2"])
def test_sharded_checkpoints_resume_on_another_world_size(tmp_path, source, ddp_chain, strategy):
    # FSDP2 computes in float32 here (the short name's default is bf16) to compare with DDP step for step.
    spec = (
        strategy
        if strategy == "fsdp"
        else {"class_path": "ouro.distributed.OuroFSDP2Strategy", "init_args": {"param_dtype": None}}
    )
    chain = _chain(tmp_path, source, FSDP_CHAIN, spec)
    sharded = chain["run"] / "checkpoints" / "step-00000002.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    said = [line for line in chain["logs"][1].splitlines() if line.startswith("ouro: ")]
    assert said == ["ouro: checkpoint written by 2 ranks, resuming on 1: data position restriped"]
    ours, ddp = _losses(chain["steps"]), _losses(ddp_chain["steps"])
    # 2 ranks, then 1: the DDP chain's first four steps (same rows, same weights and AdamW state restored).
    assert _rows([s for s in chain["steps"] if s["step"] <= 4]) == _rows(
        [s for s in ddp_chain["steps"] if s["step"] <= 4]
    )
    torch.testing.assert_close(
        torch.tensor([ours[s] for s in range(1, 5)]),
        torch.tensor([ddp[s] for s in range(1, 5)]),
        rtol=1e-4,
        atol=1e-5,
    )
    seen = _rows(chain["steps"])
    assert max(seen.values()) == 1 and set(seen) <= set(source["rows"])
    assert sorted(ours) == list(range(1, 1 + sum(1 for _ in ours)))
    # then 1 -> 2 ranks: the rows go on where the 1-rank run stopped
    said = [line for line in chain["logs"][2].splitlines() if line.startswith("ouro: ")]
    assert said == ["ouro: checkpoint written by 1 rank, resuming on 2: data position restriped"]
    assert sum(seen.values()) == 8 + 4 + 8


def test_resume_line_and_refusals(tmp_path):
    """The line at resume, the rows it says are seen again, and what is still refused (no processes)."""
    recorded = {"seq_len": SEQ, "batch_size": BATCH, "num_workers": 1, "world_size": 1}
    loader = {"dataset": {"num_samples_yielded": 6, "world_size": 1, "sample_in_epoch": 6}}
    checkpoint = {
        "callbacks": {"OuroResumeSettings": recorded},
        "loops": {"fit_loop": {"state_dict": {"combined_loader": [loader]}}},
    }
    path = Path("last.ckpt")
    assert check_resume_settings(checkpoint, dict(recorded), path, tmp_path, elastic=True) is None
    # 3 steps of 2 rows on 1 rank; on 2 ranks the loader restarts at a multiple of 4 rows: rows 4-5 come again.
    line = check_resume_settings(checkpoint, {**recorded, "world_size": 2}, path, tmp_path, elastic=True)
    assert line == (
        "checkpoint written by 1 rank, resuming on 2: data position restriped; the loader restarts at row 4 of "
        "the epoch (a multiple of the new global batch, 4 rows), so the 2 rows after it are seen again"
    )
    with pytest.raises(ResumeError, match="it was written by 1 ranks and this run has 2 \\(a data mixture"):
        check_resume_settings(checkpoint, {**recorded, "world_size": 2}, path, tmp_path, elastic=False)
    for elastic in (False, None):  # a mixture, or a data module that does not say it can restripe
        with pytest.raises(ResumeError, match="data.num_workers is 2 but last.ckpt was trained with 1"):
            check_resume_settings(checkpoint, {**recorded, "num_workers": 2}, path, tmp_path, elastic=elastic)
    with pytest.raises(ResumeError, match="data.batch_size is 4"):
        check_resume_settings(checkpoint, {**recorded, "batch_size": 4}, path, tmp_path, elastic=True)
