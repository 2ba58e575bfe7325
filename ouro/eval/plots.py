"""PNG charts of an `EvalResults`: the metric against the exit step, and against the mean depth under Q-exit.

Each chart has one panel per metric (accuracy and perplexity do not share an axis) and one line per task.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from ouro.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from ouro.eval.results import EvalResults


#: The charts `write_plots` can write.
PLOT_NAMES = ("accuracy_vs_step.png", "accuracy_vs_depth.png")


def _tasks_by_metric(results: EvalResults) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for task in results.shown_tasks():
        name = results.primary_metric(task)
        if name:
            groups.setdefault(name.split(",")[0], []).append(task)
    return groups


def write_plots(results: EvalResults, directory: str | Path) -> dict[str, Path]:
    """``accuracy_vs_step.png`` (static exits) and ``accuracy_vs_depth.png`` (Q-exit and gate curves, with the
    static exits dashed for comparison); a chart without points is not written."""
    import matplotlib  # start-up: about 1 s (3 s on a busy 2-core machine), paid only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(directory)
    static = [s for s in results.settings if s.kind == "step"]
    adaptive = [s for s in results.settings if s.kind != "step"]
    groups = _tasks_by_metric(results)
    written: dict[str, Path] = {}
    if not groups:
        return written

    def figure(title: str, xlabel: str):
        fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
        fig.suptitle(title)
        for ax, metric in zip(axes[0], groups):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        return fig, axes[0]

    def save(fig, axes, name: str) -> None:
        for ax in axes:
            ax.legend(fontsize=8)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written[name] = atomic_write_bytes(target / name, buffer.getvalue())

    trained = results.model.get("total_ut_steps")
    if static:
        fig, axes = figure("metric at each static exit step", "exit step (passes)")
        for ax, tasks in zip(axes, groups.values()):
            for task in tasks:
                steps = [int(s.value) for s in static]
                ax.plot(steps, [results.metric(task, s.key) for s in static], marker="o", label=task)
            if trained:
                ax.axvline(trained, color="grey", linestyle=":", label=f"trained steps ({trained})")
        save(fig, axes, "accuracy_vs_step.png")
    if adaptive:
        fig, axes = figure("metric against mean depth", "mean depth (passes per token)")
        for ax, tasks in zip(axes, groups.values()):
            for task in tasks:
                per_setting = results.tasks[task]
                points = sorted(
                    (per_setting[s.key].mean_depth, results.metric(task, s.key)) for s in adaptive
                )
                (line,) = ax.plot(*zip(*points), marker="o", label=f"{task} (Q-exit)")
                if static:
                    ax.plot(
                        [per_setting[s.key].mean_depth for s in static],
                        [results.metric(task, s.key) for s in static],
                        linestyle="--",
                        marker="x",
                        color=line.get_color(),
                        label=f"{task} (static exit)",
                    )
        save(fig, axes, "accuracy_vs_depth.png")
    return written
