"""Depth settings and the scoring forward: one forward up to the deepest pass scores every setting.

A *depth setting* says which pass's logits score a token:

* ``step<k>`` — static exit: every token uses pass k (1-based, the paper's "recurrent step"; k may exceed the
  trained ``total_ut_steps`` T, which runs more passes than trained).
* ``q<q>`` — Q-exit: each token uses the first of the T trained passes whose exit CDF reaches q.
* ``gate`` — Q-exit at the config's ``early_exit_threshold`` (the exit gate as trained).

The logits of pass k exist after pass k, so `score_sequences` runs the passes once, up to the deepest setting,
and reads every setting's log-probabilities on the way: a sweep over 1..8 costs one 8-pass forward, not 36
passes. Q-exit scoring uses the same parallel forward as `OuroForCausalLM.exit_logits`: every token's hidden
state is computed at every trained pass (later tokens attend to them), and a token's exit decides which pass
scores it. Real per-token early exit, with skipped passes, happens in generation (`ouro.generation`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ouro.model import AttentionLayout, OuroForCausalLM, exit_distribution, q_exit_steps


@dataclass(frozen=True)
class Depth:
    """One depth setting: a static exit step, a Q-exit threshold, or the trained gate."""

    kind: str
    """``step``, ``q`` or ``gate``."""
    value: float | None = None
    """The 1-based exit step (``step``) or the threshold q (``q``); None for ``gate``."""

    @property
    def key(self) -> str:
        """``step3``, ``q0.7`` or ``gate``: the name used in results, tables and logged metrics."""
        if self.kind == "step":
            return f"step{int(self.value)}"
        if self.kind == "q":
            return f"q{self.value:g}"
        return "gate"

    def passes(self, trained_steps: int) -> int:
        """Passes the scoring forward must run for this setting."""
        return int(self.value) if self.kind == "step" else trained_steps

    def threshold(self, early_exit_threshold: float) -> float | None:
        """The Q-exit threshold this setting uses, or None for a static exit."""
        if self.kind == "step":
            return None
        return float(self.value) if self.kind == "q" else float(early_exit_threshold)


def parse_depths(spec: str | int | Sequence[int] | None) -> list[int]:
    """Exit steps from ``"1-8"``, ``"1,2,4"``, ``"2"``, an int or a list; 1-based, each >= 1. ``"none"`` (and
    None) is no static step."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return []
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
            try:
                if match:
                    first, last = int(match.group(1)), int(match.group(2))
                    if last < first:
                        raise ValueError
                    items.extend(range(first, last + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise ValueError(
                    f"--depths: cannot read {part!r}; give exit steps like 1-8 or 1,2,4"
                ) from None
    else:
        items = [int(s) for s in spec]
    for step in items:
        if step < 1:
            raise ValueError(
                f"--depths: exit steps count passes from 1 (the first pass is step 1); got {step}"
            )
    return sorted(set(items))


def parse_thresholds(spec: str | float | Sequence[float] | None) -> list[float]:
    """Q-exit thresholds from ``"0.5,0.7,0.9"``, a float or a list; each in (0, 1]."""
    if spec is None:
        return []
    if isinstance(spec, (int, float)):
        items = [float(spec)]
    elif isinstance(spec, str):
        try:
            items = [float(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise ValueError(
                f"--exit_thresholds: cannot read {spec!r}; give thresholds like 0.5,0.7,0.9"
            ) from None
    else:
        items = [float(q) for q in spec]
    for q in items:
        if not 0.0 < q <= 1.0:
            raise ValueError(
                f"--exit_thresholds: a Q-exit threshold is an exit probability in (0, 1]; got {q:g}"
            )
    return sorted(set(items))


def depth_settings(
    depths: str | int | Sequence[int] | None = None,
    exit_thresholds: str | float | Sequence[float] | None = (),
    use_gate: bool = False,
    trained_steps: int | None = None,
) -> list[Depth]:
    """The settings of a sweep, in order: static steps, then thresholds, then the gate. ``depths`` None means
    every trained step 1..T (``trained_steps``; a sweep costs one forward either way); ``"none"`` means none."""
    if depths is None:
        if trained_steps is None:
            raise ValueError("depth_settings: pass depths or trained_steps")
        steps = list(range(1, trained_steps + 1))
    else:
        steps = parse_depths(depths)
    thresholds = parse_thresholds(exit_thresholds)
    settings = [Depth("step", s) for s in steps] + [Depth("q", q) for q in thresholds]
    if use_gate:
        settings.append(Depth("gate"))
    if not settings:
        raise ValueError("--depths none leaves nothing to evaluate: add --exit_thresholds or --gate")
    return settings


@dataclass
class Score:
    """One sequence scored under one depth setting."""

    logprob: float
    """Sum of the continuation tokens' log-probabilities."""
    greedy: bool
    """Every continuation token is the argmax of its logits."""
    depth_sum: float
    """Sum over the continuation tokens of the pass that scored them (1-based)."""
    tokens: int
    """Continuation tokens scored."""
    input_tokens: int
    """Tokens the forward read for this sequence."""
    seconds: float
    """This sequence's share (by input tokens) of the forward time up to the pass the setting needs."""


@torch.no_grad()
def score_sequences(
    model: OuroForCausalLM, sequences: Sequence[tuple[Sequence[int], int]], settings: Sequence[Depth]
) -> list[dict[str, Score]]:
    """Score every ``(tokens, n)`` pair (the last ``n`` tokens are the continuation, predicted from what
    precedes them) under every setting, in one batched forward up to the deepest setting's pass.

    Sequences are right-padded: with causal attention, padding after a sequence cannot change it.
    Returns one ``{setting key: Score}`` per sequence.
    """
    if not sequences:
        return []
    config = model.config
    trained = config.total_ut_steps
    device = next(model.parameters()).device
    for tokens, n in sequences:
        if not 1 <= n < len(tokens):
            raise ValueError(f"a scored sequence needs 1 <= continuation < length; got {n} of {len(tokens)}")
    inputs = [list(t[:-1]) for t, _ in sequences]
    longest = max(len(t) for t in inputs)
    ids = torch.zeros(len(inputs), longest, dtype=torch.long, device=device)
    rows, positions, targets = [], [], []
    for b, ((tokens, n), given) in enumerate(zip(sequences, inputs)):
        ids[b, : len(given)] = torch.tensor(given, dtype=torch.long, device=device)
        start = len(tokens) - 1 - n
        rows += [b] * n
        positions += range(start, start + n)
        targets += list(tokens[len(tokens) - n :])
    rows_t = torch.tensor(rows, device=device)
    positions_t = torch.tensor(positions, device=device)
    targets_t = torch.tensor(targets, device=device)

    static = {int(s.value) for s in settings if s.kind == "step"}
    needs_exit = any(s.kind != "step" for s in settings)
    deepest = max(s.passes(trained) for s in settings)
    net = model.model
    layout = AttentionLayout.build(ids)
    start_time = time.perf_counter()
    hidden, rope = net.embed(ids, layout.positions)
    logprob_at: dict[int, torch.Tensor] = {}  # 1-based step -> (tokens,) target log-probabilities
    greedy_at: dict[int, torch.Tensor] = {}
    gate_logits, elapsed = [], []
    for step in range(1, deepest + 1):
        hidden, gate = net.step(hidden, rope, layout, step - 1)
        scored = hidden[rows_t, positions_t]
        if step in static or (needs_exit and step <= trained):
            logprobs = F.log_softmax(model.lm_head(scored).float(), dim=-1)
            logprob_at[step] = logprobs.gather(-1, targets_t[:, None])[:, 0]
            greedy_at[step] = logprobs.argmax(-1) == targets_t
        if needs_exit and step <= trained:
            gate_logits.append(gate[rows_t, positions_t].float())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed.append(time.perf_counter() - start_time)

    if needs_exit:
        exit_probs = exit_distribution(torch.cat(gate_logits, dim=-1))  # (tokens, T)
        stacked = torch.stack([logprob_at[s] for s in range(1, trained + 1)], dim=-1)
        stacked_greedy = torch.stack([greedy_at[s] for s in range(1, trained + 1)], dim=-1)
    per_setting: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = {}
    for setting in settings:
        q = setting.threshold(config.early_exit_threshold)
        if q is None:
            step = int(setting.value)
            depth = torch.full_like(targets_t, step, dtype=torch.float)
            per_setting[setting.key] = (logprob_at[step], greedy_at[step], depth, elapsed[step - 1])
            continue
        exits = q_exit_steps(exit_probs, q)  # 0-based, (tokens,)
        chosen = stacked.gather(-1, exits[:, None])[:, 0]
        chosen_greedy = stacked_greedy.gather(-1, exits[:, None])[:, 0]
        per_setting[setting.key] = (chosen, chosen_greedy, (exits + 1).float(), elapsed[trained - 1])

    input_total = sum(len(t) for t in inputs)
    results: list[dict[str, Score]] = [{} for _ in sequences]
    bounds = torch.tensor([0] + [n for _, n in sequences]).cumsum(0).tolist()
    for key, (logprob, greedy, depth, seconds) in per_setting.items():
        logprob, greedy, depth = logprob.cpu(), greedy.cpu(), depth.cpu()
        for b, given in enumerate(inputs):
            lo, hi = bounds[b], bounds[b + 1]
            results[b][key] = Score(
                logprob=float(logprob[lo:hi].double().sum()),
                greedy=bool(greedy[lo:hi].all()),
                depth_sum=float(depth[lo:hi].sum()),
                tokens=hi - lo,
                input_tokens=len(given),
                seconds=seconds * len(given) / input_total,
            )
    return results
