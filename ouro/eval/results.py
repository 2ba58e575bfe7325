"""`EvalResults`: metrics per task and depth setting, with mean depth and speed; results.json, Markdown, PNGs.

``results.json`` keeps lm-eval's format with one more level: ``results[task][setting]`` is exactly the dict
lm-eval writes under ``results[task]`` (``"acc,none"``, ``"acc_stderr,none"``, ``"alias"`` ...), plus
``mean_depth``, ``tokens_per_second`` and ``requests``. ``configs``, ``versions``, ``n-shot``,
``higher_is_better``, ``n-samples`` and ``group_subtasks`` are lm-eval's own; ``depth_settings``, ``model``,
``request_types``, ``generation`` (which exit mode and KV sharing generation ran with) and ``scoring`` (per
setting, how log-likelihood and generation requests were scored: under Q-exit, log-likelihood runs every pass
and the exit only picks the logits, generation really exits early) are added.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ouro.atomic import atomic_write_text
from ouro.eval.plots import PLOT_NAMES, write_plots
from ouro.eval.scoring import Depth

#: Metric names preferred as a task's headline number, in order.
PREFERRED_METRICS = ("acc", "exact_match", "acc_norm", "word_perplexity", "bits_per_byte")


@dataclass
class DepthResult:
    """One task under one depth setting."""

    metrics: dict[str, Any]
    """lm-eval's result dict for the task (``"acc,none"`` -> value, stderr entries, ``alias``)."""
    mean_depth: float
    """Mean number of passes behind each scored or generated token (1-based)."""
    tokens_per_second: float
    """Tokens read per second of scoring forward, or tokens generated per second."""
    requests: int = 0
    """lm-eval requests of this task (0 for a group: see its subtasks)."""


MAX_SHOWN_SUBTASKS = 8
"""Largest group whose subtasks the table and plots show next to the group itself."""


@dataclass
class EvalResults:
    """What `ouro.eval.runner.evaluate` returns: ``tasks[task][setting key]`` -> `DepthResult`."""

    settings: list[Depth]
    tasks: dict[str, dict[str, DepthResult]]
    lm_eval: dict[str, Any] = field(default_factory=dict)
    """The depth-independent parts of lm-eval's output (configs, versions, n-shot, ...)."""
    model: dict[str, Any] = field(default_factory=dict)
    request_types: dict[str, str] = field(default_factory=dict)
    generation: dict[str, Any] | None = None
    """How generation tasks ran (None when there were none)."""
    scoring: dict[str, dict[str, str]] = field(default_factory=dict)
    """Setting key -> request kind (``loglikelihood``, ``generation``) -> how it was scored under that setting."""
    requested: list[str] = field(default_factory=list)
    """The task names asked for; the table and plots show these (e.g. ``mmlu``, not its 57 subtasks)."""

    # ------------------------------------------------------------------------------------------- reading
    def shown_tasks(self) -> list[str]:
        """The requested tasks and groups when lm-eval reported each of them, else every reported task. A
        requested group of at most `MAX_SHOWN_SUBTASKS` tasks (a built-in family's difficulties) is followed by
        its subtasks; a larger one (``mmlu``) is shown alone."""
        if not (self.requested and all(name in self.tasks for name in self.requested)):
            return list(self.tasks)
        groups = self.lm_eval.get("group_subtasks") or {}
        shown: list[str] = []
        for name in self.requested:
            subtasks = [t for t in groups.get(name, []) if t in self.tasks]
            small = len(subtasks) <= MAX_SHOWN_SUBTASKS
            shown += [t for t in [name, *(subtasks if small else [])] if t not in shown]
        return shown

    def primary_metric(self, task: str) -> str | None:
        """The headline metric of ``task`` (``acc,none``, ``exact_match,<filter>`` ...), or None."""
        for result in self.tasks.get(task, {}).values():
            names = [
                k
                for k, v in result.metrics.items()
                if "," in k and "_stderr" not in k and isinstance(v, (int, float))
            ]
            for preferred in PREFERRED_METRICS:
                for name in names:
                    if name.split(",")[0] == preferred:
                        return name
            return names[0] if names else None
        return None

    def metric(self, task: str, key: str, name: str | None = None) -> float:
        """``name`` (default: the primary metric) of ``task`` under setting ``key``."""
        name = name or self.primary_metric(task)
        value = self.tasks[task][key].metrics.get(name) if name else None
        return float(value) if isinstance(value, (int, float)) else float("nan")

    def flat(self) -> dict[str, float]:
        """``{"<task>/<setting>": metric, "<task>/<setting>/mean_depth": ...}`` (for loggers)."""
        values: dict[str, float] = {}
        for task, per_setting in self.tasks.items():
            for key, result in per_setting.items():
                values[f"{task}/{key}"] = self.metric(task, key)
                values[f"{task}/{key}/mean_depth"] = result.mean_depth
        return values

    # ------------------------------------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        results = {
            task: {
                key: {
                    **r.metrics,
                    "mean_depth": _finite(r.mean_depth),
                    "tokens_per_second": _finite(r.tokens_per_second),
                    "requests": r.requests,
                }
                for key, r in per_setting.items()
            }
            for task, per_setting in self.tasks.items()
        }
        settings = [{"key": s.key, "kind": s.kind, "value": s.value} for s in self.settings]
        return {
            "results": results,
            **self.lm_eval,
            "depth_settings": settings,
            "model": self.model,
            "request_types": self.request_types,
            "generation": self.generation,
            "scoring": self.scoring,
        }

    def markdown(self) -> str:
        """One row per shown task and setting: the primary metric, the mean depth and the speed."""
        lines = [
            "| task | setting | metric | value | mean depth | tokens/s |",
            "|---|---|---|---:|---:|---:|",
        ]
        for task in self.shown_tasks():
            name = self.primary_metric(task) or "-"
            for key, result in self.tasks[task].items():
                lines.append(
                    f"| {task} | {key} | {name} | {self.metric(task, key):.4f} | {result.mean_depth:.2f} | "
                    f"{result.tokens_per_second:.0f} |"
                )
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path, plots: bool = True) -> dict[str, Path]:
        """Write ``results.json``, ``results.md`` and (``plots``) the PNGs into ``directory``."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        written = {
            "json": atomic_write_text(target / "results.json", json.dumps(self.to_dict(), indent=2) + "\n"),
            "markdown": atomic_write_text(target / "results.md", self.markdown()),
        }
        if plots:
            written.update(write_plots(self, target))
        for name in PLOT_NAMES:  # a chart of an earlier run in the same folder would pass for this run's
            if name not in written:
                (target / name).unlink(missing_ok=True)
        return written


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
