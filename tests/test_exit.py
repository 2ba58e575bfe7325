"""The model package's exit CDF: pass by pass (generation) equals all passes at once (training), and training
and generation run the same loop (`OuroModel.embed`, then `OuroModel.step` once per pass)."""

from __future__ import annotations

import torch
from conftest import build_tiny_model

from ouro.generation import generate
from ouro.model import ExitCDF, exit_distribution, q_exit_steps


def test_running_cdf_equals_the_cdf_of_the_whole_distribution():
    gates = 3 * torch.randn(40, 5)
    cdf = ExitCDF((40,), "cpu")
    expected = exit_distribution(gates).cumsum(-1)
    for t in range(4):  # the last pass needs no decision: every remaining token exits there
        torch.testing.assert_close(cdf.update(gates[:, t]), expected[:, t], rtol=1e-6, atol=1e-6)


def test_running_cdf_keeps_only_the_tokens_still_running():
    gates = 2 * torch.randn(30, 4)
    q = 0.6
    cdf, rows = ExitCDF((30,), "cpu"), torch.arange(30)
    exits = torch.full((30,), 3)
    for t in range(3):
        done = cdf.update(gates[rows, t]) >= q
        exits[rows[done]] = t
        rows = rows[~done]
        cdf.keep(~done)
    assert torch.equal(exits, q_exit_steps(exit_distribution(gates), q))


def test_training_forward_and_generation_share_the_loop_step():
    model = build_tiny_model(num_hidden_layers=1, total_ut_steps=3)
    calls = []
    original = model.model.step

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.model.step = counted
    model(torch.randint(0, 50, (1, 6)))
    assert len(calls) == 3, "the training forward runs one loop step per pass"
    calls.clear()
    result = generate(model, [5, 6, 7], max_new_tokens=4, exit_threshold=1.0, eos_token_id=[])
    assert len(result.tokens[0]) == 4
    assert len(calls) == 3 + 3 * 3, "prefill: one step per pass; each of 3 decode tokens: one per pass"
