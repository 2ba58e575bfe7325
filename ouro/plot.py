"""``ouro plot RUN_DIR``: PNG charts of per-step loss, exit distribution and learning rate against tokens."""

from __future__ import annotations

import csv
import math
import re
from bisect import bisect_right
from pathlib import Path

_STEP_METRIC = re.compile(r"^(train|val)/(ce|exit_prob)_step(\d+)$")
_EVAL_METRIC = re.compile(r"^eval/(.+)/(step(\d+)|q([\d.]+))$")  # EvalInTraining's accuracies


def find_metrics_files(run_dir: Path) -> list[Path]:
    """``metrics.csv`` of a run: the folder's own, else every ``version_*`` below it, oldest attempt first."""
    if (run_dir / "metrics.csv").is_file():
        return [run_dir / "metrics.csv"]

    def version(path: Path) -> tuple[str, int]:
        number = path.parent.name.removeprefix("version_")
        return (str(path.parent.parent), int(number) if number.isdigit() else -1)

    return sorted(run_dir.glob("**/version_*/metrics.csv"), key=version)


def read_metrics(files: list[Path]) -> list[dict[str, float]]:
    """Rows of the CSV logs with their non-empty numeric cells."""
    rows = []
    for path in files:
        with path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                row = {}
                for key, value in raw.items():
                    if key and value not in (None, ""):
                        try:
                            row[key] = float(value)
                        except ValueError:
                            continue
                if row:
                    rows.append(row)
    return rows


def _tokens_by_step(rows: list[dict[str, float]]) -> tuple[list[float], list[float]]:
    pairs = sorted(
        {(r["step"], r["train/tokens_seen"]) for r in rows if "step" in r and "train/tokens_seen" in r}
    )
    return [p[0] for p in pairs], [p[1] for p in pairs]


def series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(tokens, values) of one metric. Rows without ``train/tokens_seen`` (validation, throughput) take the
    tokens of the latest training row at or before their step. ``rows`` run oldest attempt first: where a resumed
    attempt logged a step again, its value is the one kept."""
    steps, tokens = _tokens_by_step(rows)
    points: dict[
        float, tuple[float, float]
    ] = {}  # by step: a step logged by two attempts counts once, the later
    for row in rows:
        if key not in row or not math.isfinite(row[key]):
            continue
        if "train/tokens_seen" in row:
            x = row["train/tokens_seen"]
        elif "step" in row and steps:
            i = bisect_right(steps, row["step"]) - 1
            x = tokens[max(i, 0)]
        else:
            continue
        points.pop(row.get("step", x), None)
        points[row.get("step", x)] = (x, row[key])
    ordered = sorted(points.values(), key=lambda point: point[0])
    return [x for x, _ in ordered], [y for _, y in ordered]


def _step_keys(rows: list[dict[str, float]], split: str, kind: str) -> list[str]:
    found = {}
    for row in rows:
        for key in row:
            match = _STEP_METRIC.match(key)
            if match and match.group(1) == split and match.group(2) == kind:
                found[int(match.group(3))] = key
    return [found[t] for t in sorted(found)]


def _eval_keys(rows: list[dict[str, float]]) -> dict[str, list[str]]:
    """``{task: [eval/<task>/step1, ..., eval/<task>/q<q>, ...]}``: exit steps in order, then Q-exit."""
    found: dict[str, dict[tuple[int, float], str]] = {}
    for row in rows:
        for key in row:
            match = _EVAL_METRIC.match(key)
            if match:
                order = (0, int(match.group(3))) if match.group(3) else (1, float(match.group(4)))
                found.setdefault(match.group(1), {})[order] = key
    return {task: [keys[o] for o in sorted(keys)] for task, keys in sorted(found.items())}


def plot(run_dir: str, out: str | None = None) -> list[str]:
    """Write PNG charts of a run: per-step loss, exit distribution, learning rate and in-training evaluation
    accuracy per exit step (``EvalInTraining``, one chart per task) against tokens seen.

    Args:
        run_dir: A stage's run directory (or a folder holding ``metrics.csv``); every
            ``version_*/metrics.csv`` below it is read, so resumed attempts continue the curves.
        out: Folder for the PNG files (default: ``RUN_DIR/plots``).

    Returns:
        The paths of the written PNG files.
    """
    import matplotlib  # start-up: about 1 s (3 s on a busy 2-core machine), paid only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    files = find_metrics_files(root)
    if not files:
        raise FileNotFoundError(
            f"no metrics.csv in {run_dir!r} or its version_* folders; train with the CSV "
            "logger (the default of `ouro fit`) or pass the folder that holds "
            "metrics.csv"
        )
    rows = read_metrics(files)
    if not any("train/tokens_seen" in r for r in rows):
        raise ValueError(
            f"{files[-1]} has no train/tokens_seen column: no training step was logged yet "
            "(lower trainer.log_every_n_steps or train longer)"
        )
    target = Path(out) if out is not None else root / "plots"
    target.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(fig, name: str) -> None:
        path = target / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
        print(f"wrote {path}")

    def axes(title: str, ylabel: str):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.set_title(title)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    for split in ("train", "val"):
        keys = _step_keys(rows, split, "ce")
        if keys:
            fig, ax = axes(f"{split} cross-entropy per recurrent step", "cross-entropy")
            for key in keys:
                xs, ys = series(rows, key)
                ax.plot(
                    xs,
                    ys,
                    label=f"step {key.rsplit('step', 1)[1]}",
                    marker="o" if split == "val" else None,
                    markersize=3,
                    linewidth=1,
                )
            ax.legend()
            save(fig, f"{split}_loss_per_step.png")

    keys = _step_keys(rows, "train", "exit_prob")
    if keys:
        fig, ax = axes("exit distribution p(t) (train)", "probability")
        curves = [series(rows, key) for key in keys]
        xs = curves[0][0]
        if all(c[0] == xs for c in curves):
            ax.stackplot(
                xs, [c[1] for c in curves], labels=[f"step {i + 1}" for i in range(len(curves))], alpha=0.85
            )
            ax.set_ylim(0, 1)
        else:
            for i, (cx, cy) in enumerate(curves):
                ax.plot(cx, cy, label=f"step {i + 1}")
        ax.legend(loc="upper left")
        save(fig, "exit_distribution.png")

    xs, ys = series(rows, "lr")
    if xs:
        fig, ax = axes("learning rate", "lr")
        ax.plot(xs, ys, linewidth=1.5)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        save(fig, "lr.png")

    for task, keys in _eval_keys(rows).items():
        fig, ax = axes(f"{task}: accuracy per exit step (in-training evaluation)", "accuracy")
        for key in keys:
            xs, ys = series(rows, key)
            setting = key.rsplit("/", 1)[1]
            if setting.startswith("step"):
                label, style = f"step {setting[4:]}", "-"
            else:
                _, depths = series(rows, f"{key}/depth")
                mean_depth = f", depth {depths[-1]:.2f}" if depths else ""
                label, style = f"Q-exit q={setting[1:]}{mean_depth}", "--"
            ax.plot(xs, ys, style, label=label, marker="o", markersize=3, linewidth=1)
        ax.set_ylim(0, 1)
        ax.legend()
        save(fig, f"eval_{task.replace('/', '_')}.png")

    if not written:
        raise ValueError(f"{files[-1]} holds none of train/ce_step*, train/exit_prob_step*, val/ce_step*, lr")
    return written
