"""scripts/demo_tables.py: the demonstration's tables from results.json files, and docs/eval.md quoting them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "demo_tables.py"


def write_results(folder: Path, per_key: dict[str, dict[str, float]]) -> None:
    """A results.json as `ouro eval` writes it: results[task][setting]["acc,none"] and mean_depth."""
    results = {
        task: {
            key: {"acc,none": value, "mean_depth": 2.5 if key.startswith("q") else 1.0}
            for key, value in keys.items()
        }
        for task, keys in per_key.items()
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"results": results}))


def fake_seed(root: Path, seed: int, looped_d3: float, one_pass_d3: float, deep_d3: float) -> None:
    tasks = ("ouro_roots_d1", "ouro_roots_d2", "ouro_roots_d3", "ouro_roots")
    looped = {t: {k: 1.0 for k in ("step1", "step2", "step4", "step6", "q0.5")} for t in tasks}
    looped["ouro_roots_d3"].update(
        step1=0.01, step2=looped_d3, step4=looped_d3, step6=looped_d3, **{"q0.5": 0.9}
    )
    write_results(root / f"seed{seed}" / "looped", looped)
    for arm, d3 in (("one_pass", one_pass_d3), ("one_pass_deep", deep_d3)):
        write_results(
            root / f"seed{seed}" / arm, {t: {"step1": d3 if t == "ouro_roots_d3" else 1.0} for t in tasks}
        )


def run(*args: str) -> str:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout


def test_tables_report_every_seed_the_mean_and_what_holds(tmp_path):
    fake_seed(tmp_path, 7, looped_d3=0.996, one_pass_d3=0.44, deep_d3=0.60)
    fake_seed(tmp_path, 8, looped_d3=1.0, one_pass_d3=0.564, deep_d3=0.52)
    fake_seed(tmp_path, 9, looped_d3=1.0, one_pass_d3=0.5, deep_d3=0.5)
    for arm in ("looped", "one_pass_deep"):  # seed 9 ran one arm only
        (tmp_path / "seed9" / arm / "results.json").unlink()
    (tmp_path / "seed10" / "looped").mkdir(parents=True)  # a seed without any results file is left out
    out = run("--results", str(tmp_path))
    assert "| looped, step 2 | 0.996 | 1.000 | - | 0.998 | 0.996 - 1.000 |" in out
    assert "| one pass, 1 layer | 0.440 | 0.564 | 0.500 | 0.501 | 0.440 - 0.564 |" in out
    assert "seed 10" not in out
    assert "| looped, Q-exit 0.5 | 1.000 / 1.000 / - (2.50 / 2.50 / -) |" in out
    assert "looped at steps 2, 4, 6 above one pass, 1 layer, seeds 7, 8: yes (0.996, 1.000 at worst" in out
    assert (
        "one pass, 4 layers against 1 layer, seeds 7, 8: the order changes (4 layers, 1 layer ahead)" in out
    )


def test_no_results_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--results", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0 and "results.json" in done.stderr


def test_docs_quote_the_tables_of_the_committed_results():
    if not (ROOT / "docs" / "demo-results").is_dir():
        pytest.skip("no committed demonstration results")
    assert run() in (ROOT / "docs" / "eval.md").read_text()


def test_collect_copies_the_results_and_the_looped_training_curve(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_seed(runs / "demo-seed7" / "eval_tmp", 7, looped_d3=1.0, one_pass_d3=0.4, deep_d3=0.5)
    (runs / "demo-seed7" / "eval_tmp" / "seed7").rename(runs / "demo-seed7" / "eval")
    logs = runs / "demo-seed7" / "looped" / "logs" / "version_0"
    logs.mkdir(parents=True)
    header = "train/tokens_seen,train/loss," + ",".join(f"eval/ouro_roots_d3/step{k}" for k in range(1, 5))
    rows = ["100,0.5,,,,", "2048000,,0.1,0.2,0.3,0.39", "4096000,0.4,,,,", "12288000,,0.0,1.0,1.0,1.0"]
    (logs / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    out = run("--collect", str(runs), "--results", str(results))
    assert (results / "seed7" / "one_pass_deep" / "results.json").is_file()
    assert (results / "seed7" / "looped" / "training_d3.csv").read_text().splitlines() == [
        "tokens,step1,step2,step3,step4",
        "2048000,0.1,0.2,0.3,0.39",
        "12288000,0.0,1.0,1.0,1.0",
    ]
    assert "| 2.0M | 0.39 |" in out and "| 12.3M | 1.00 |" in out
