"""Compiled layers do not recompile when a schedule changes the loop count, RoPE base, sequence length or rows.

Dynamo's graph capture (what recompiles) does not depend on the backend, so the layers compile with the "eager"
backend here: the test counts graphs without paying inductor's code generation.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ouro.config import OuroConfig
from ouro.module import OuroLM


@pytest.fixture
def eager_backend(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def train_step(module: OuroLM, optimizer, rows: int, seq: int) -> None:
    tokens = torch.randint(1, module.config.vocab_size, (rows, seq + 1))
    loss = module.compute_loss({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]})[0].loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_schedule_changes_mid_stage_do_not_recompile(eager_backend):
    from torch._dynamo.utils import counters

    config = OuroConfig.preset(
        "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=2, total_ut_steps=4
    )
    module = OuroLM(model=config, compile=True)
    module.configure_model()
    optimizer = module.configure_optimizers()
    counters.clear()
    train_step(module, optimizer, rows=2, seq=16)
    first = graphs_compiled()
    assert first >= 1, "the layers were compiled"
    for change in (
        lambda: module.set_loop_count(2),  # LoopSchedule
        lambda: module.set_loop_count(6),
        lambda: module.set_rope_base(40_000.0),  # LongContextSchedule
        lambda: None,  # sequence length (LongContextSchedule) and rows (BatchSizeRamp) below
    ):
        change()
        train_step(module, optimizer, rows=2, seq=16)
    # Sizes of 1 are the exception: torch specializes them, so a one-row batch compiles its own graph once.
    for rows, seq in ((2, 32), (2, 48), (4, 48), (8, 24)):
        train_step(module, optimizer, rows=rows, seq=seq)
    assert graphs_compiled() == first, f"{graphs_compiled() - first} recompiles after the first step"
    assert not counters["graph_break"], dict(counters["graph_break"])
