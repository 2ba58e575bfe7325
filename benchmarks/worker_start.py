"""How long an ouro loader takes from ``iter(loader)`` to its first batch, with its workers forked by the training
process itself (the default start method) or by the worker server that ``ouro fit`` uses
(`ouro.data.worker_server`).

    .venv/bin/python benchmarks/worker_start.py                      # 1 and 2 workers, 10 loaders each
    .venv/bin/python benchmarks/worker_start.py --workers 4 --repeats 20 --json worker_start.json

Each start method runs in a fresh process (the server, once started, serves every later loader of its process);
the two alternate, so that load from other processes hits both. Every repeat is a new iterator, so new workers.
The data is the built-in corpus (prepared on first use, then cached).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("fork", "server")


def measure(method: str, workers: int, repeats: int) -> dict:
    """In this process: seconds to the first batch of ``repeats`` new iterators."""
    from ouro.data.pretrain import PretrainDataModule
    from ouro.data.worker_server import start_worker_server

    if method == "server" and start_worker_server() is None:
        raise SystemExit(
            "the worker server cannot start here (not Linux, Python >= 3.14, or threads running)"
        )
    data = PretrainDataModule(
        sources="builtin", val_source=None, seq_len=256, batch_size=8, num_workers=workers
    )
    data.setup("fit")
    loader = data.train_dataloader()
    first = []
    for _ in range(repeats):
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        first.append(time.perf_counter() - start)
        del batches
    return {"first_batch_s": first}


def _in_fresh_process(method: str, workers: int, repeats: int) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from worker_start import measure; "
        f"print(json.dumps(measure({method!r}, {workers}, {repeats})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=_env()
    )
    if result.returncode != 0:
        raise SystemExit(f"{method}, {workers} workers failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers per loader")
    parser.add_argument("--repeats", type=int, default=10, help="new iterators per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per start method, alternating")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        for _ in range(args.rounds):
            for method in METHODS:
                runs[method].append(_in_fresh_process(method, workers, args.repeats))
        for method in METHODS:
            first = [s for run in runs[method] for s in run["first_batch_s"]]
            rows.append(
                {
                    "workers": workers,
                    "method": method,
                    "median_first_batch_s": statistics.median(first),
                    "max_first_batch_s": max(first),
                }
            )
    print(f"{'workers':>7} {'started by':>10} {'first batch, median s':>22} {'max s':>7}")
    for row in rows:
        print(
            f"{row['workers']:>7} {row['method']:>10} {row['median_first_batch_s']:>22.3f} "
            f"{row['max_first_batch_s']:>7.3f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
