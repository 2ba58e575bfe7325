"""A training process forks its loader workers, so it must not run other threads when it does: a child forked
beside a running thread inherits whatever lock that thread held at that instant, and can wait on it for ever
(a hang of the whole job, silent, since the worker still looks alive). What ``ouro fit`` imports must start no
thread; pyarrow did (its allocator's background thread starts when the library loads) until ouro imported it
only where it reads parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Parses every tiny stage recipe as ``ouro fit`` does (classes resolved, so every module a stage names is
# imported), then prints the names of the process's threads, as the kernel knows them.
PARSE_THEN_LIST_THREADS = """
import contextlib, io, json, os, sys
from ouro.cli import main

for recipe in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["fit", "--config", recipe, "--print_config"])
        except SystemExit as stop:
            assert not stop.code, (recipe, stop.code)
tasks = sorted(os.listdir("/proc/self/task"))
print(json.dumps([open(f"/proc/self/task/{task}/comm").read().strip() for task in tasks]))
"""


def test_ouro_fit_starts_no_thread_before_it_forks_loader_workers() -> None:
    recipes = sorted(str(path) for path in (ROOT / "recipes" / "tiny").glob("*.yaml"))
    assert len(recipes) >= 7  # every stage and the gate training
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", PARSE_THEN_LIST_THREADS, *recipes],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    threads = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(threads) == 1, f"threads besides the main one: {threads}"
