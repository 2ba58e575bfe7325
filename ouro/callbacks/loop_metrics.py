"""A per-step table of the looped model's validation metrics (CE, perplexity, exit probability, Q-exit)."""

from __future__ import annotations

import re
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.schedule import tokens_seen

_STEP = re.compile(r"^val/(ce|ppl|exit_prob)_step(\d+)$")
_QEXIT = re.compile(r"^val/(loss|depth)_q([0-9.eE+-]+)$")


def loop_table(metrics: dict[str, Any]) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Rows per recurrent step (``step``, ``ce``, ``ppl``, ``exit_prob``) and per Q-exit threshold (``q``,
    ``loss``, ``depth``) from logged ``val/...`` metrics; missing values are absent from a row."""
    steps: dict[int, dict[str, float]] = {}
    thresholds: dict[float, dict[str, float]] = {}
    for key, value in metrics.items():
        if (match := _STEP.match(key)) is not None:
            step = int(match.group(2))
            steps.setdefault(step, {"step": step})[match.group(1)] = float(value)
        elif (match := _QEXIT.match(key)) is not None:
            q = float(match.group(2))
            thresholds.setdefault(q, {"q": q})[match.group(1)] = float(value)
    return [steps[k] for k in sorted(steps)], [thresholds[k] for k in sorted(thresholds)]


def format_loop_table(step_rows: list[dict[str, float]], q_rows: list[dict[str, float]]) -> str:
    def cell(row: dict[str, float], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    lines = [f"{'step':>4}  {'CE':>8}  {'ppl':>10}  {'p(exit)':>8}"]
    lines += [
        f"{int(r['step']):>4}  {cell(r, 'ce', '8.4f')}  {cell(r, 'ppl', '10.3f')}  "
        f"{cell(r, 'exit_prob', '8.4f')}"
        for r in step_rows
    ]
    if q_rows:
        lines.append(f"{'q':>6}  {'loss':>8}  {'depth':>6}")
        lines += [f"{r['q']:>6g}  {cell(r, 'loss', '8.4f')}  {cell(r, 'depth', '6.3f')}" for r in q_rows]
    return "\n".join(lines)


class LoopMetrics(L.Callback):
    """After each validation, print a table of the per-step cross-entropy, perplexity and exit probability and
    of the Q-exit losses and mean depths, read from the metrics the module logged (``val/ce_step{t}``,
    ``val/ppl_step{t}``, ``val/exit_prob_step{t}``, ``val/loss_q{q}``, ``val/depth_q{q}``).

    Metrics the module does not log show as ``-``. The last table is kept in ``last`` (rows as dicts).
    """

    def __init__(self) -> None:
        self.last: tuple[list[dict[str, float]], list[dict[str, float]]] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step_rows, q_rows = loop_table(dict(trainer.callback_metrics))
        if not step_rows and not q_rows:
            return
        self.last = (step_rows, q_rows)
        rank_zero_info(
            f"Loop metrics at {tokens_seen(pl_module)} tokens (step {trainer.global_step}):\n"
            + format_loop_table(step_rows, q_rows)
        )
