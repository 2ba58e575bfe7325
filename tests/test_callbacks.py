"""Token-driven callbacks in a real Trainer on CPU: values at chosen token counts, exact resume, errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TrainingRecorder
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from ouro import OuroConfig
from ouro.callbacks import (
    BatchSizeRamp,
    LongContextSchedule,
    LoopMetrics,
    LoopSchedule,
    Throughput,
    TokenBudget,
    WarmupStableDecay,
)
from ouro.callbacks.long_context import split_rows
from ouro.callbacks.loop_metrics import loop_table
from ouro.checkpoints import final_lr_from_checkpoint
from ouro.data.base import OuroDataModule
from ouro.model import flops_per_token
from ouro.module import OptimizerConfig, OuroLM

torch.set_num_threads(1)

BATCH, SEQ = 2, 16
MICRO = BATCH * SEQ  # tokens per micro-batch on one device


# ------------------------------------------------------------------------------------------------ fixtures
class _Blocks(Dataset):
    """``rows`` token rows repeating with a period of ``period`` rows (random, fixed seed), following the
    batch contract; two documents in every odd row."""

    def __init__(self, rows: int, period: int, seq_len: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.blocks = torch.randint(1, vocab, (period, seq_len + 1), generator=g)
        self.rows, self.seq_len = rows, seq_len

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i % len(self.blocks)]
        doc_ids = (torch.arange(self.seq_len) >= self.seq_len // 2).long() * (i % 2)
        return {"input_ids": block[:-1], "labels": block[1:], "doc_ids": doc_ids}


class TinyData(OuroDataModule):
    """Unshuffled rows of ``seq_len`` tokens that repeat every ``period`` rows.

    A map-style loader restarts at row 0 when Lightning resumes mid-epoch; checkpointing after a whole number
    of periods makes the resumed run see the same rows as the uninterrupted one.
    """

    def __init__(
        self, rows: int = 400, period: int = 400, seq_len: int = SEQ, batch_size: int = BATCH
    ) -> None:
        super().__init__()
        self.rows, self.period, self.seq_len, self.batch_size = rows, period, seq_len, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Blocks(self.rows, self.period, self.seq_len, 512, 0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Blocks(4, 4, self.seq_len, 512, 1), batch_size=self.batch_size)


def tiny_module(**kwargs) -> OuroLM:
    config = OuroConfig.preset("tiny", total_ut_steps=kwargs.pop("total_ut_steps", 3))
    kwargs.setdefault("optimizer", OptimizerConfig(lr=3e-3))
    return OuroLM(model=config, **kwargs)


def fit(
    root: Path,
    callbacks: list,
    max_steps: int,
    module: OuroLM | None = None,
    data: TinyData | None = None,
    ckpt_path: str | None = None,
    **trainer_kwargs,
) -> tuple[L.Trainer, OuroLM, TrainingRecorder]:
    torch.manual_seed(0)
    module = module or tiny_module()
    recorder = TrainingRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        default_root_dir=root,
        logger=trainer_kwargs.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=trainer_kwargs.pop("limit_val_batches", 0),
        callbacks=[*callbacks, recorder],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=data or TinyData(), ckpt_path=ckpt_path)
    return trainer, module, recorder


def step_checkpoints(root: Path, every: int) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=root / "ckpt",
        every_n_train_steps=every,
        save_top_k=-1,
        filename="s{step}",
        auto_insert_metric_name=False,
    )


# ------------------------------------------------------------------------------------------ the LR curve
def test_warmup_stable_decay_at_chosen_token_counts():
    peak, floor = 3e-4, 3e-5
    wsd = WarmupStableDecay(
        total_tokens=1000, warmup_tokens=100, decay_tokens=400, decay="cosine", min_lr=floor
    )
    assert wsd.lr_at(0, peak) == 0.0
    assert wsd.lr_at(50, peak) == pytest.approx(peak / 2)
    assert wsd.lr_at(100, peak) == pytest.approx(peak)
    assert wsd.lr_at(600, peak) == pytest.approx(peak)  # decay starts at 1000 - 400
    assert wsd.lr_at(800, peak) == pytest.approx(floor + (peak - floor) * 0.5)  # cos(pi/2) = 0
    assert wsd.lr_at(700, peak) == pytest.approx(floor + (peak - floor) * (1 + math.sqrt(0.5)) / 2)
    assert wsd.lr_at(1000, peak) == pytest.approx(floor)
    assert wsd.lr_at(5000, peak) == pytest.approx(floor)  # past the budget: stays at the floor

    linear = WarmupStableDecay(total_tokens=1000, decay_tokens=400, decay="linear", min_lr_ratio=0.1)
    assert linear.lr_at(0, peak) == pytest.approx(peak)  # no warmup
    assert linear.lr_at(700, peak) == pytest.approx(0.1 * peak + 0.9 * peak * 0.75)
    sqrt = WarmupStableDecay(total_tokens=1000, decay_tokens=400, decay="1-sqrt")
    assert sqrt.lr_at(700, peak) == pytest.approx(peak * (1 - 0.5))  # progress 1/4, sqrt = 1/2, floor 0
    constant = WarmupStableDecay(total_tokens=1000)
    assert {constant.lr_at(t, peak) for t in (0, 500, 1000)} == {peak}


@pytest.mark.parametrize(
    "make, field",
    [
        (
            lambda: WarmupStableDecay(total_tokens=1000, warmup_tokens=700, decay_tokens=400),
            "warmup_tokens + decay_tokens",
        ),
        (lambda: WarmupStableDecay(total_tokens=1000, decay="exp"), "decay"),
        (lambda: WarmupStableDecay(total_tokens="1000"), "total_tokens"),
        (lambda: WarmupStableDecay(total_tokens=1000, min_lr=1e-5, min_lr_ratio=0.1), "min_lr_ratio"),
        (lambda: WarmupStableDecay(total_tokens=1000, min_lr_ratio=2.0), "min_lr_ratio"),
        (lambda: LoopSchedule(steps=[[0, 8], [0, 4]]), "steps[1]"),
        (lambda: LoopSchedule(steps=[[10, 8]]), "steps[0]"),
        (lambda: LoopSchedule(steps=[[0, 4.5]]), "steps[0]"),
        (lambda: LoopSchedule(beta=[[0, -0.1]]), "beta[0]"),
        (lambda: LoopSchedule(), "steps and/or beta"),
        (lambda: LongContextSchedule(seq_len=4096, warmup=[[0, 1000], [10, 4096]]), "warmup[0]"),
        (lambda: LongContextSchedule(seq_len=4096, warmup=[[0, 1024], [10, 2048]]), "last warmup entry"),
        (lambda: LongContextSchedule(rope_theta=-1.0), "rope_theta"),
        (lambda: LongContextSchedule(rope_theta=[[0, 1e4], [5, 0.0]]), "rope_theta[1]"),
        (lambda: BatchSizeRamp(8_000_000, 4_000_000, 100), "end_tokens_per_step"),
        (lambda: BatchSizeRamp(4_000_000, 8_000_000, -1), "ramp_tokens"),
        (lambda: TokenBudget(0), "max_tokens"),
        (lambda: TokenBudget(10, checkpoint_name="x/y"), "checkpoint_name"),
        (lambda: Throughput(log_every_n_steps=0), "log_every_n_steps"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_field(make, field):
    with pytest.raises(ValueError) as error:
        make()
    assert field in str(error.value)


def test_bad_settings_found_at_setup_fail_before_the_first_step(tmp_path):
    recorder_steps = []
    # total_tokens from a TokenBudget that is too small for warmup + decay
    with pytest.raises(ValueError, match="exceeds total_tokens"):
        _, _, rec = fit(
            tmp_path, [WarmupStableDecay(warmup_tokens=200, decay_tokens=200), TokenBudget(300)], 4
        )
        recorder_steps = rec.steps
    assert recorder_steps == []
    with pytest.raises(ValueError, match="no TokenBudget"):
        fit(tmp_path, [WarmupStableDecay(warmup_tokens=10)], 4)
    # a global batch that is not a whole number of micro-batches
    with pytest.raises(ValueError, match="start_tokens_per_step"):
        fit(tmp_path, [BatchSizeRamp(MICRO + 1, 2 * MICRO + 2, 100)], 4)
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit(tmp_path, [BatchSizeRamp(MICRO, 2 * MICRO, 100)], 4, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="last warmup entry"):  # checked against the datamodule's seq_len
        fit(tmp_path, [LongContextSchedule(warmup=[[0, 8]])], 4)


# ------------------------------------------------------------------------- schedules in a Trainer + resume
def schedule_callbacks():
    # 4 rows of 2 x 16 tokens per epoch: every step trains 32 tokens; 10 steps = 320 tokens.
    return [
        WarmupStableDecay(
            total_tokens=320, warmup_tokens=64, decay_tokens=128, decay="cosine", min_lr_ratio=0.1
        ),
        LoopSchedule(steps=[[0, 3], [96, 2]], beta=[[0, 0.1], [160, 0.05]]),
        LongContextSchedule(rope_theta=[[0, 1e4], [224, 4e4]]),
    ]


def reference(tokens_after: int, tokens_before: int, peak: float) -> dict[str, float]:
    """The recipe of `schedule_callbacks` written out independently."""
    if tokens_after < 64:
        lr = peak * tokens_after / 64
    elif tokens_after <= 192:
        lr = peak
    else:
        lr = 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * (tokens_after - 192) / 128))
    return dict(
        lr=lr,
        T=3 if tokens_before < 96 else 2,
        beta=0.1 if tokens_before < 160 else 0.05,
        theta=1e4 if tokens_before < 224 else 4e4,
    )


def test_schedules_follow_the_recipe_and_resume_exactly(tmp_path):
    data = TinyData(period=10)  # 5 distinct batches, then again
    full_trainer, module, full = fit(
        tmp_path / "full", [*schedule_callbacks(), step_checkpoints(tmp_path / "full", 5)], 10, data=data
    )
    assert [s["tokens"] for s in full.steps] == [MICRO * (i + 1) for i in range(10)]
    for step in full.steps:
        expected = reference(step["tokens"], step["tokens"] - MICRO, 3e-3)
        assert step["lr"] == pytest.approx(expected["lr"], rel=1e-12)
        assert (step["T"], step["beta"], step["theta"]) == (
            expected["T"],
            expected["beta"],
            expected["theta"],
        )
    assert {s["T"] for s in full.steps} == {3, 2} and {s["theta"] for s in full.steps} == {1e4, 4e4}

    checkpoint = tmp_path / "full" / "ckpt" / "s5.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["callbacks"]["WarmupStableDecay"]["last_lr"] == pytest.approx(full.steps[4]["lr"])
    assert final_lr_from_checkpoint(state) == pytest.approx(full.steps[4]["lr"])

    _, resumed_module, resumed = fit(
        tmp_path / "resumed", schedule_callbacks(), 10, data=TinyData(period=10), ckpt_path=str(checkpoint)
    )
    assert resumed.steps == full.steps[5:]  # tokens, LR, β, T, RoPE base: equal, not just close
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(full.losses[5:]), rtol=1e-6, atol=0)
    for (name, a), b in zip(module.state_dict().items(), resumed_module.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_annealing_stage_starts_from_the_previous_final_lr(tmp_path):
    def schedule():
        return WarmupStableDecay(
            total_tokens=4 * MICRO,
            decay_tokens=4 * MICRO,
            decay="cosine",
            min_lr=1e-4,
            init_lr_from_previous=True,
        )

    module = tiny_module()
    module.stage.previous_final_lr = 2e-3  # what stage initialisation puts there
    wsd = schedule()
    _, _, rec = fit(tmp_path, [wsd, step_checkpoints(tmp_path, 2)], 4, module=module, data=TinyData(period=4))
    for step in rec.steps:
        progress = step["tokens"] / (4 * MICRO)
        assert step["lr"] == pytest.approx(1e-4 + (2e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert rec.steps[-1]["lr"] == pytest.approx(1e-4) and wsd.peak_lr == 2e-3

    # A resumed annealing stage is not re-initialised (no previous_stage_final_lr): the peak comes from state.
    _, _, resumed = fit(
        tmp_path / "b", [schedule()], 4, data=TinyData(period=4), ckpt_path=str(tmp_path / "ckpt" / "s2.ckpt")
    )
    assert resumed.steps == rec.steps[2:]

    # without a previous LR it falls back to optimizer.lr (with a warning)
    fallback = WarmupStableDecay(total_tokens=4 * MICRO, init_lr_from_previous=True)
    with pytest.warns(UserWarning, match="no final LR"):
        _, _, rec = fit(tmp_path / "c", [fallback], 2)
    assert [s["lr"] for s in rec.steps] == [3e-3, 3e-3]


# ------------------------------------------------------------------------------------------ batch ramp
def test_batch_ramp_steps_whole_windows_and_matches_manual_accumulation(tmp_path):
    # 1 -> 4 micro-batches per step over 12 micro-batches of tokens; 24 batches per epoch, 10 optimizer steps.
    ramp = BatchSizeRamp(MICRO, 4 * MICRO, ramp_tokens=12 * MICRO)
    data = TinyData()
    start = tiny_module()
    trainer, module, rec = fit(tmp_path, [ramp], 10, module=copy.deepcopy(start), data=data)
    micro = [s["micro"] for s in rec.steps]
    assert [
        s["accumulate"] for s in rec.steps
    ] == micro  # every step summed exactly its factor of micro-batches
    assert micro[0] == 1 and micro[-1] == 4 and micro == sorted(micro)
    for step in rec.steps:  # the factor never exceeds what the ramp asked for at the start of its window
        before = step["tokens"] - step["micro"] * MICRO
        target = MICRO + min(before / (12 * MICRO), 1.0) * 3 * MICRO
        assert step["micro"] <= target // MICRO

    # Independent reference: plain PyTorch with the same windows (zero grad, loss / factor, AdamW step).
    torch.manual_seed(0)
    reference = start
    optimizer = reference.configure_optimizers()
    batches = iter(data.train_dataloader())
    for factor in micro:
        optimizer.zero_grad()
        for _ in range(factor):
            (reference.compute_loss(next(batches))[0].loss / factor).backward()
        optimizer.step()
    for (name, a), b in zip(reference.state_dict().items(), module.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_batch_ramp_resumes_with_the_same_windows(tmp_path):
    def callbacks(root):
        return [BatchSizeRamp(MICRO, 4 * MICRO, ramp_tokens=12 * MICRO), step_checkpoints(root, 4)]

    # every batch is the same (period = one batch), so any resume point sees the same data
    _, full_module, full = fit(
        tmp_path / "full", callbacks(tmp_path / "full"), 8, data=TinyData(period=BATCH)
    )
    checkpoint = tmp_path / "full" / "ckpt" / "s4.ckpt"
    _, module, resumed = fit(
        tmp_path / "resumed",
        callbacks(tmp_path / "resumed"),
        8,
        data=TinyData(period=BATCH),
        ckpt_path=str(checkpoint),
    )
    assert resumed.steps == full.steps[4:]
    torch.testing.assert_close(
        torch.tensor(resumed.losses),
        torch.tensor(full.losses[-len(resumed.losses) :]),
        rtol=1e-6,
        atol=0,
    )
    assert len(resumed.steps) > 0 and resumed.steps[0]["accumulate"] > 1
    for (name, a), b in zip(full_module.state_dict().items(), module.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)


def test_batch_ramp_resumed_with_a_larger_micro_batch_keeps_tokens_per_step(tmp_path):
    """A resume on twice the ranks doubles the tokens of a micro-batch (here: twice the rows per batch, which is
    the same to the ramp): the ramp takes half the micro-batches per step instead of refusing."""

    def callbacks(root):
        return [BatchSizeRamp(MICRO, 4 * MICRO, ramp_tokens=12 * MICRO), step_checkpoints(root, 4)]

    fit(tmp_path / "full", callbacks(tmp_path / "full"), 4, data=TinyData(period=BATCH))
    _, _, resumed = fit(
        tmp_path / "resumed",
        callbacks(tmp_path / "resumed"),
        8,
        data=TinyData(period=2 * BATCH, batch_size=2 * BATCH),
        ckpt_path=str(tmp_path / "full" / "ckpt" / "s4.ckpt"),
    )
    assert len(resumed.steps) == 4
    for step in resumed.steps:
        assert step["accumulate"] == step["micro"]  # whole windows
        before = step["tokens"] - step["micro"] * 2 * MICRO
        target = MICRO + min(before / (12 * MICRO), 1.0) * 3 * MICRO
        assert step["micro"] == max(1, int(target // (2 * MICRO))), step


# --------------------------------------------------------------------------------------- long context
def test_split_rows_keeps_tokens_labels_and_documents():
    batch = {
        "input_ids": torch.arange(32).view(2, 16),
        "labels": torch.arange(1, 33).view(2, 16),
        "doc_ids": torch.tensor([[0] * 6 + [1] * 10, [0] * 16]),
    }
    original = {k: v.clone() for k, v in batch.items()}
    split_rows(batch, 4)
    assert batch["input_ids"].shape == (8, 4)
    for key in original:
        assert torch.equal(batch[key][3], original[key][0, 12:16])  # 4th new row = end of the first old row
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    assert bool((batch["doc_ids"].diff(dim=1) >= 0).all())


def test_long_context_sets_rope_and_data_length_and_warms_up(tmp_path):
    data = TinyData(seq_len=8)  # the recipe asks for 16: the callback sets it before the loader is built
    callback = LongContextSchedule(
        rope_theta=4e4, seq_len=16, warmup=[[0, 4], [2 * MICRO, 8], [4 * MICRO, 16]]
    )
    trainer, module, rec = fit(
        tmp_path, [callback, Throughput(log_every_n_steps=1, peak_flops=1e12)], 6, data=data
    )
    assert data.seq_len == 16 and module.config.rope_theta == 4e4
    assert {s["theta"] for s in rec.steps} == {4e4}
    assert rec.shapes == [
        (8, 4),
        (8, 4),
        (4, 8),
        (4, 8),
        (2, 16),
        (2, 16),
    ]  # same tokens per batch throughout
    assert [s["tokens"] for s in rec.steps] == [MICRO * (i + 1) for i in range(6)]
    # Throughput counted FLOPs of the rows actually trained (last step: full length, all 3 passes).
    last = trainer.callbacks[1].last
    expected_per_token = flops_per_token(module.config, 16)
    assert last["throughput/flops_per_sec"] / last["throughput/tokens_per_sec"] == pytest.approx(
        expected_per_token
    )
    assert last["throughput/mfu"] == pytest.approx(last["throughput/flops_per_sec"] / 1e12)
    assert flops_per_token(module.config, 16) == pytest.approx(
        3 * flops_per_token(module.config, 16, num_steps=1)
    )


# ---------------------------------------------------------------------------------------- token budget
def test_token_budget_stops_checkpoints_and_marks_the_stage(tmp_path):
    budget = TokenBudget(max_tokens=5 * MICRO - 1)  # reached during the 5th step
    trainer, module, rec = fit(tmp_path, [budget], 100)
    assert trainer.global_step == 5 and module.tokens_seen == 5 * MICRO
    record = json.loads((tmp_path / "stage_complete.json").read_text())
    assert (
        record["tokens"] == 5 * MICRO and record["global_step"] == 5 and record["max_tokens"] == 5 * MICRO - 1
    )
    checkpoint = Path(record["checkpoint"])
    assert checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["ouro"]["tokens_seen"] == 5 * MICRO and state["global_step"] == 5

    # Resuming a finished stage trains nothing and keeps the marker.
    (tmp_path / "stage_complete.json").unlink()
    trainer, module, rec = fit(
        tmp_path, [TokenBudget(max_tokens=5 * MICRO - 1)], 100, ckpt_path=str(checkpoint)
    )
    assert rec.steps == [] and trainer.global_step == 5
    assert json.loads((tmp_path / "stage_complete.json").read_text())["tokens"] == 5 * MICRO


def test_token_budget_waits_for_the_end_of_an_accumulation_window(tmp_path):
    trainer, module, rec = fit(tmp_path, [TokenBudget(max_tokens=3 * MICRO)], 100, accumulate_grad_batches=2)
    assert module.tokens_seen == 4 * MICRO and trainer.global_step == 2 and rec.steps[-1]["micro"] == 2


def test_stage_without_budget_reached_is_not_marked(tmp_path):
    fit(tmp_path, [TokenBudget(max_tokens=100 * MICRO)], 3)
    assert not (tmp_path / "stage_complete.json").exists()


# ---------------------------------------------------------------------------------------- loop metrics
def test_loop_metrics_table_matches_the_logged_validation_metrics(tmp_path, caplog):
    metrics = LoopMetrics()
    trainer, module, _ = fit(tmp_path, [metrics], 2, limit_val_batches=2, val_check_interval=2)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    steps, thresholds = metrics.last
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        assert row["ce"] == logged[f"val/ce_step{row['step']}"]
        assert row["ppl"] == pytest.approx(math.exp(row["ce"]), rel=1e-5)
    assert [r["q"] for r in thresholds] == sorted(module.q_exit_thresholds)
    for row in thresholds:
        assert row["depth"] == logged[f"val/depth_q{row['q']:g}"]
    parsed = loop_table(
        {"val/ce_step2": 1.0, "val/ce_step1": 2.0, "val/loss_q0.5": 3.0, "train/ce_step1": 9.0}
    )
    assert parsed == ([{"step": 1, "ce": 2.0}, {"step": 2, "ce": 1.0}], [{"q": 0.5, "loss": 3.0}])


# ------------------------------------------------------------------------------------------- recipes
RECIPE = """
callbacks:
  - class_path: ouro.callbacks.WarmupStableDecay
    init_args: {total_tokens: 400_000_000, warmup_tokens: 1_000_000, decay_tokens: 100_000_000, decay: 1-sqrt,
                min_lr_ratio: 0.1}
  - class_path: ouro.callbacks.LongContextSchedule
    init_args: {rope_theta: [[0, 10000], [1000, 40000.0]], seq_len: 4096, warmup: [[0, 1024], [100, 4096]]}
  - class_path: ouro.callbacks.LoopSchedule
    init_args: {steps: [[0, 8], [100, 4]], beta: [[0, 0.1], [100, 0.05]]}
  - class_path: ouro.callbacks.BatchSizeRamp
    init_args: {start_tokens_per_step: 4_194_304, end_tokens_per_step: 8_388_608, ramp_tokens:
    100_000_000_000}
  - class_path: ouro.callbacks.TokenBudget
    init_args: {max_tokens: 3_000_000_000_000}
  - ouro.callbacks.LoopMetrics
  - class_path: ouro.callbacks.Throughput
    init_args: {peak_flops: 989e12}
"""


def _parse(text: str):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[L.Callback])
    return parser.instantiate(parser.parse_string(text)).callbacks


def test_callbacks_parse_from_a_recipe_and_bad_keys_or_types_are_named():
    wsd, context, loops, ramp, budget, _, throughput = _parse(RECIPE)
    assert wsd.lr_at(400_000_000, 1.0) == pytest.approx(0.1) and wsd.decay == "1-sqrt"
    assert context.rope_theta_at(999) == 1e4 and context.rope_theta_at(1000) == 4e4
    assert context.seq_len_at(50, 4096) == 1024 and context.seq_len_at(100, 4096) == 4096
    assert (loops.steps_at(99), loops.steps_at(100), loops.beta_at(100)) == (8, 4, 0.05)
    assert ramp.end_tokens_per_step == 8_388_608 and budget.max_tokens == 3 * 10**12
    assert throughput.peak_flops == 989e12
    bad = {"warmup_steps": "{total_tokens: 1000, warmup_steps: 7}", "total_tokens": "{total_tokens: lots}"}
    for field, args in bad.items():
        with pytest.raises(Exception) as error:
            _parse(f"callbacks:\n  - class_path: ouro.callbacks.WarmupStableDecay\n    init_args: {args}\n")
        assert field in str(error.value)


# ------------------------------------------------------------------------------------- explicit controls
class _Controlled:
    """A module and datamodule stand-in that records what schedules ask through the explicit setters."""

    objective = "stage1"

    def __init__(self, tokens: int) -> None:
        self.tokens_seen, self.seq_len, self.calls = tokens, 8, []

    def set_loop_count(self, steps: int) -> None:
        self.calls.append(("loops", steps))

    def set_entropy_coef(self, beta: float) -> None:
        self.calls.append(("beta", beta))

    def set_rope_base(self, theta: float) -> None:
        self.calls.append(("rope", theta))


class _ControlledData(OuroDataModule):
    """An ouro DataModule that records the sequence lengths a schedule sets."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.seq_len, self.calls = 8, calls

    def set_seq_len(self, seq_len: int) -> None:
        self.calls.append(("seq_len", seq_len))


def test_schedules_steer_through_explicit_setters_not_the_config():
    from types import SimpleNamespace

    target = _Controlled(tokens=100)
    LoopSchedule(steps=[[0, 4], [50, 2]], beta=[[0, 0.1], [80, 0.05]]).setup(None, target, "fit")
    LongContextSchedule(rope_theta=[[0, 1e4], [100, 4e4]], seq_len=16).setup(
        SimpleNamespace(datamodule=_ControlledData(target.calls)), target, "fit"
    )
    assert target.calls == [("loops", 2), ("beta", 0.05), ("seq_len", 16), ("rope", 4e4)]
    with pytest.raises(TypeError, match=r"set_loop_count\(\)"):
        LoopSchedule(steps=[[0, 4]]).setup(None, SimpleNamespace(tokens_seen=0), "fit")


def test_the_module_setters_change_what_the_next_forward_runs():
    module = OuroLM(OuroConfig.preset("tiny", total_ut_steps=3))
    ids = torch.randint(0, 100, (1, 8))
    module.set_loop_count(2)
    assert module.net(ids).num_steps == 2 and module.config.total_ut_steps == 2
    before = module.net.logits(module.net(ids))
    module.set_rope_base(123.0)
    assert module.net.config.rope_theta == 123.0 and not torch.equal(
        before, module.net.logits(module.net(ids))
    )
    with pytest.raises(ValueError, match="loop count"):
        module.set_loop_count(0)
    with pytest.raises(ValueError, match="stage2"):
        OuroLM(OuroConfig.preset("tiny", total_ut_steps=3), objective="stage2").set_loop_count(1)
