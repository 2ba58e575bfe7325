"""The tables of docs/eval.md's demonstration, regenerated from the committed `ouro eval` results.

    .venv/bin/python scripts/demo_tables.py                  # reads docs/demo-results/seed<S>/<arm>/results.json
    .venv/bin/python scripts/demo_tables.py --results DIR    # another folder of the same layout
    .venv/bin/python scripts/demo_tables.py --collect runs   # first copy runs/demo-seed<S>/... there

Each `results.json` is what `ouro eval` wrote for one arm and seed (the commands are in docs/eval.md), and
`looped/training_d3.csv` the looped arm's in-training d3 accuracy per exit step (from its `metrics.csv`). The
output is Markdown: accuracy at difficulty 3 (two look-ups composed) for every seed with the mean and the
range, every difficulty per seed, the orderings that hold in every seed, and the looped arm's d3 curve.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
from pathlib import Path

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "docs" / "demo-results"
ARMS = ("looped", "one_pass", "one_pass_deep")
ROWS = [  # (label, arm, setting key)
    ("looped, step 1", "looped", "step1"),
    ("looped, step 2", "looped", "step2"),
    ("looped, step 4 (trained depth)", "looped", "step4"),
    ("looped, step 6 (beyond T)", "looped", "step6"),
    ("looped, Q-exit 0.5", "looped", "q0.5"),
    ("one pass, 1 layer", "one_pass", "step1"),
    ("one pass, 4 layers", "one_pass_deep", "step1"),
]
TASKS = {"d1": "ouro_roots_d1", "d2": "ouro_roots_d2", "d3": "ouro_roots_d3", "all": "ouro_roots"}


def load(results: Path) -> dict[int, dict[str, dict]]:
    """``{seed: {arm: results.json}}`` for every seed folder that holds at least one arm."""
    runs: dict[int, dict[str, dict]] = {}
    for folder in sorted(results.glob("seed*")):
        match = re.fullmatch(r"seed(\d+)", folder.name)
        files = {arm: folder / arm / "results.json" for arm in ARMS}
        found = {arm: json.loads(f.read_text()) for arm, f in files.items() if f.is_file()}
        if match and found:
            runs[int(match.group(1))] = found
    if not runs:
        raise SystemExit(f"no seed<S>/<arm>/results.json ({', '.join(ARMS)}) under {results}")
    return runs


def accuracy(runs: dict, seed: int, arm: str, task: str, key: str) -> float | None:
    """The accuracy, or None where that arm of that seed was not run."""
    result = runs[seed].get(arm)
    return None if result is None else float(result["results"][task][key]["acc,none"])


def passes(runs: dict, seed: int, arm: str, task: str, key: str) -> float | None:
    result = runs[seed].get(arm)
    return None if result is None else float(result["results"][task][key]["mean_depth"])


def show(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables(runs: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(runs)
    lines = [
        "Accuracy at d3 (two look-ups composed), every seed (-: not run):",
        "",
        "| arm, exit | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for label, arm, key in ROWS:
        values = [accuracy(runs, s, arm, TASKS["d3"], key) for s in seeds]
        known = [v for v in values if v is not None]
        spread = f"{statistics.mean(known):.3f} | {min(known):.3f} - {max(known):.3f}" if known else "- | -"
        lines.append(f"| {label} | " + " | ".join(map(show, values)) + f" | {spread} |")
    lines += [
        "",
        f"Every difficulty, seeds {' / '.join(map(str, seeds))} (Q-exit: mean passes in brackets):",
        "",
        "| arm, exit | d1 | d2 | d3 | all |",
        "|---|---|---|---|---|",
    ]
    for label, arm, key in ROWS:
        cells = []
        for task in TASKS.values():
            values = " / ".join(show(accuracy(runs, s, arm, task, key)) for s in seeds)
            if key.startswith("q"):
                values += " (" + " / ".join(show(passes(runs, s, arm, task, key), 2) for s in seeds) + ")"
            cells.append(values)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Checked in every seed that ran the arms compared (d3):", ""]
    lines += [f"* {claim}" for claim in claims(runs)]
    return "\n".join(lines) + "\n"


def _compare(runs, arms: tuple[str, ...]) -> list[int]:
    return [s for s in sorted(runs) if all(a in runs[s] for a in arms)]


def _seeds(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def claims(runs: dict[int, dict[str, dict]]) -> list[str]:
    """Orderings at d3, each checked in the seeds that ran both sides, said as it came out."""
    d3 = TASKS["d3"]
    out = []
    for arm, name in (("one_pass", "one pass, 1 layer"), ("one_pass_deep", "one pass, 4 layers")):
        seeds = _compare(runs, ("looped", arm))
        if not seeds:
            continue
        lowest = [min(accuracy(runs, s, "looped", d3, k) for k in ("step2", "step4", "step6")) for s in seeds]
        other = [accuracy(runs, s, arm, d3, "step1") for s in seeds]
        first = [accuracy(runs, s, "looped", d3, "step1") for s in seeds]
        above = all(a > b for a, b in zip(lowest, other))
        below = all(f < b for f, b in zip(first, other))
        out.append(
            f"looped at steps 2, 4, 6 above {name}, {_seeds(seeds)}: {'yes' if above else 'no'} "
            f"({', '.join(map(show, lowest))} at worst, against {', '.join(map(show, other))}); "
            f"at step 1 below it: {'yes' if below else 'no'}"
        )
    seeds = _compare(runs, ("one_pass", "one_pass_deep"))
    if seeds:
        order = []
        for s in seeds:
            deep, shallow = (
                accuracy(runs, s, "one_pass_deep", d3, "step1"),
                accuracy(runs, s, "one_pass", d3, "step1"),
            )
            order.append("4 layers" if deep > shallow else "1 layer" if shallow > deep else "tie")
        same = len(set(order)) == 1
        out.append(
            f"one pass, 4 layers against 1 layer, {_seeds(seeds)}: "
            + (f"{order[0]} ahead in each" if same else f"the order changes ({', '.join(order)} ahead)")
        )
    return out


CURVE_COLUMNS = ["tokens"] + [f"step{k}" for k in range(1, 5)]


def collect(runs: Path, results: Path) -> None:
    """Copy ``runs/demo-seed<S>/eval/<arm>/results.json`` and the looped arm's in-training d3 curve (from
    ``runs/demo-seed<S>/looped/logs/version_*/metrics.csv``) into ``results/seed<S>/``."""
    for run in sorted(runs.glob("demo-seed*")):
        seed = run.name.removeprefix("demo-")
        for arm in ARMS:
            source = run / "eval" / arm / "results.json"
            if source.is_file():
                (results / seed / arm).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, results / seed / arm / "results.json")
        logs = sorted((run / "looped" / "logs").glob("version_*/metrics.csv"))
        if logs and (results / seed / "looped").is_dir():
            with open(logs[-1], newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("eval/ouro_roots_d3/step4")]
            with open(results / seed / "looped" / "training_d3.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(CURVE_COLUMNS)
                for r in rows:
                    steps = [r[f"eval/ouro_roots_d3/step{k}"] for k in range(1, 5)]
                    writer.writerow([int(float(r["train/tokens_seen"])), *steps])


def curve(results: Path, seeds: list[int]) -> list[str]:
    """The looped arm's in-training d3 accuracy at exit step 4, one column per seed."""
    curves = {}
    for seed in seeds:
        path = results / f"seed{seed}" / "looped" / "training_d3.csv"
        if path.is_file():
            with open(path, newline="") as handle:
                curves[seed] = {int(r["tokens"]): float(r["step4"]) for r in csv.DictReader(handle)}
    if not curves:
        return []
    tokens = sorted(set.intersection(*(set(c) for c in curves.values())))
    lines = [
        "",
        "The looped arm's d3 accuracy during training, exit step 4 (`EvalInTraining`: the first 33 d3 test questions):",
        "",
        "| tokens | " + " | ".join(f"seed {s}" for s in curves) + " |",
        "|---:|" + "---:|" * len(curves),
    ]
    for n in tokens:
        lines.append(f"| {n / 1e6:.1f}M | " + " | ".join(f"{c[n]:.2f}" for c in curves.values()) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="folder of seed<S>/<arm>/results.json"
    )
    parser.add_argument("--collect", type=Path, help="a runs/ folder to copy the results from first")
    args = parser.parse_args(argv)
    if args.collect:
        collect(args.collect, args.results)
    runs = load(args.results)
    print(tables(runs) + "\n".join(curve(args.results, sorted(runs))) + "\n", end="")


if __name__ == "__main__":
    main()
