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
    """``{seed: {arm: results.json}}`` for every seed folder that holds all three arms."""
    runs: dict[int, dict[str, dict]] = {}
    for folder in sorted(results.glob("seed*")):
        match = re.fullmatch(r"seed(\d+)", folder.name)
        files = {arm: folder / arm / "results.json" for arm in ARMS}
        if match and all(f.is_file() for f in files.values()):
            runs[int(match.group(1))] = {arm: json.loads(f.read_text()) for arm, f in files.items()}
    if not runs:
        raise SystemExit(f"no seed<S>/<arm>/results.json with all of {', '.join(ARMS)} under {results}")
    return runs


def accuracy(result: dict, task: str, key: str) -> float:
    return float(result["results"][task][key]["acc,none"])


def passes(result: dict, task: str, key: str) -> float:
    return float(result["results"][task][key]["mean_depth"])


def tables(runs: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(runs)
    lines = [
        "Accuracy at d3 (two look-ups composed), every seed:",
        "",
        "| arm, exit | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for label, arm, key in ROWS:
        values = [accuracy(runs[s][arm], TASKS["d3"], key) for s in seeds]
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(
            f"| {label} | {cells} | {statistics.mean(values):.3f} | {min(values):.3f} - {max(values):.3f} |"
        )
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
            values = " / ".join(f"{accuracy(runs[s][arm], task, key):.3f}" for s in seeds)
            if key.startswith("q"):
                values += " (" + " / ".join(f"{passes(runs[s][arm], task, key):.2f}" for s in seeds) + ")"
            cells.append(values)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "What holds in every seed (d3):", ""]
    lines += [f"* {claim}" for claim in claims(runs)]
    return "\n".join(lines) + "\n"


def claims(runs: dict[int, dict[str, dict]]) -> list[str]:
    """Orderings at d3, each checked in every seed and said as it came out."""
    seeds = sorted(runs)
    d3 = {(arm, key): [accuracy(runs[s][arm], TASKS["d3"], key) for s in seeds] for _, arm, key in ROWS}
    looped_from_2 = [
        min(d3[("looped", k)][i] for k in ("step2", "step4", "step6")) for i in range(len(seeds))
    ]
    best_one_pass = [
        max(d3[("one_pass", "step1")][i], d3[("one_pass_deep", "step1")][i]) for i in range(len(seeds))
    ]
    out = []
    above = all(a > b for a, b in zip(looped_from_2, best_one_pass))
    out.append(
        f"looped at steps 2, 4 and 6 above both one-pass arms: {'yes' if above else 'no'} "
        f"(looped's lowest of those {', '.join(f'{v:.3f}' for v in looped_from_2)}; "
        f"best one-pass arm {', '.join(f'{v:.3f}' for v in best_one_pass)})"
    )
    first = d3[("looped", "step1")]
    below = all(f < b for f, b in zip(first, best_one_pass))
    out.append(f"looped at step 1 below the best one-pass arm: {'yes' if below else 'no'}")
    deep, shallow = d3[("one_pass_deep", "step1")], d3[("one_pass", "step1")]
    order = ["4 layers" if a > b else "1 layer" if b > a else "tie" for a, b in zip(deep, shallow)]
    same = len(set(order)) == 1
    out.append(
        "one pass, 4 layers against 1 layer: "
        + (f"{order[0]} ahead in every seed" if same else f"the order changes ({', '.join(order)} ahead)")
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
