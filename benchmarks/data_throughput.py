"""Data pipeline throughput: ``ouro prepare`` tokens/s per worker; shard bytes per token and loader tokens/s
per worker for uint16 shards (what ``ouro prepare`` writes for a vocabulary <= 65,536) against int32 shards of
the same tokens (what it wrote before); and the loader set against what one H200 consumes at ouro-1.4b.

    .venv/bin/python benchmarks/data_throughput.py                      # built-in corpus
    .venv/bin/python benchmarks/data_throughput.py --workers 1 2 --loader_workers 1 2 --seq_len 4096

Shards go to a temporary folder, so every run tokenizes from scratch; the built-in corpus and tokenizer come
from the cache (built on first use). The H200 figure is computed, not measured: 50 % of 989 TFLOP/s dense bf16
divided by ``ouro.model.flops_per_token(ouro-1.4b, seq_len)`` (training: 3x the forward, every pass).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

H200_BF16_DENSE = 989e12
MFU = 0.5
GPUS_PER_NODE = 8


def bench_prepare(files: list[Path], tokenizer: Path, workers: int, root: Path) -> dict:
    from ouro.data.prepare import prepare

    out = root / f"prep-{workers}"
    start = time.perf_counter()
    manifest = prepare(
        [str(f) for f in files], str(out), tokenizer=str(tokenizer), num_workers=workers, chunk_tokens=1 << 20
    )
    seconds = time.perf_counter() - start
    return dict(
        workers=workers,
        tokens=manifest.tokens,
        seconds=seconds,
        out=out,
        tokens_per_s=manifest.tokens / seconds,
        per_worker=manifest.tokens / seconds / workers,
    )


def int32_copy(shards: Path, out: Path) -> Path:
    """The same tokens as int32 chunks (the layout of the earlier prepare), with the same manifest otherwise."""
    import numpy as np

    from ouro.data.manifest import Manifest
    from ouro.data.shards import write_chunk, write_index

    out.mkdir(parents=True)
    index = json.loads((shards / "index.json").read_text())
    chunks = []
    for chunk in index["chunks"]:
        raw = (shards / chunk["filename"]).read_bytes()
        tokens = np.frombuffer(raw, dtype=np.uint16, offset=12).astype(np.int32)
        chunks.append(write_chunk(out / chunk["filename"], tokens))
    write_index(out, chunks, index["config"]["chunk_size"], "int32")
    shutil.copyfile(shards / "tokenizer.json", out / "tokenizer.json")
    manifest = Manifest.load(shards)
    manifest.token_dtype = "int32"
    manifest.save(out)
    return out


def bytes_per_token(shards: Path) -> float:
    from ouro.data.manifest import Manifest

    chunks = sum(p.stat().st_size for p in shards.glob("chunk-*.bin"))
    return chunks / Manifest.load(shards).tokens


def bench_loader(shards: Path, seq_len: int, batch_size: int, workers: int, batches: int) -> float:
    from ouro.data.pretrain import PretrainDataModule

    dm = PretrainDataModule(
        sources=[str(shards)], val_source=None, seq_len=seq_len, batch_size=batch_size, num_workers=workers
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = min(batches, len(loader) - 2)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size * seq_len / (time.perf_counter() - start)


def h200_tokens_per_s(seq_len: int) -> float:
    from ouro.config import OuroConfig
    from ouro.model import flops_per_token

    return MFU * H200_BF16_DENSE / flops_per_token(OuroConfig.preset("ouro-1.4b"), seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="prepare worker counts to compare"
    )
    parser.add_argument("--seq_len", type=int, default=4096, help="loader block length (ouro-1.4b: 4096)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--loader_workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument(
        "--rounds", type=int, default=3, help="loader measurements per setting (best is kept)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    # One thread per tokenizing worker, so that tokens/s/worker means one core (the Rust tokenizer would
    # otherwise use every core in a single-worker run and none extra in forked workers).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from ouro.data.builtin import builtin_dir, builtin_tokenizer_path, write_corpus

    tokenizer = builtin_tokenizer_path()
    files = write_corpus(builtin_dir())["train"]
    root = Path(tempfile.mkdtemp(prefix="ouro-bench-", dir=os.environ.get("OURO_BENCH_DIR")))
    results: dict = {"cpus": os.cpu_count()}
    try:
        print(
            f"corpus: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB; "
            f"{os.cpu_count()} CPUs"
        )
        prepared = [bench_prepare(files, tokenizer, w, root) for w in args.workers]
        print("\nprepare (tokenize + write shards)")
        print(f"{'workers':>8} {'tokens':>10} {'seconds':>8} {'tokens/s':>10} {'tokens/s/worker':>16}")
        for r in prepared:
            print(
                f"{r['workers']:>8} {r['tokens']:>10} {r['seconds']:>8.1f} {r['tokens_per_s']:>10.0f} "
                f"{r['per_worker']:>16.0f}"
            )
        results["prepare"] = [{k: v for k, v in r.items() if k != "out"} for r in prepared]
        uint16 = prepared[0]["out"]
        int32 = int32_copy(uint16, root / "int32")
        print(
            f"\nshards: uint16 {bytes_per_token(uint16):.3f} bytes/token, int32 {bytes_per_token(int32):.3f}"
        )
        results["bytes_per_token"] = {"uint16": bytes_per_token(uint16), "int32": bytes_per_token(int32)}
        demand = h200_tokens_per_s(args.seq_len)
        print(
            f"\nloader, batch {args.batch_size} x {args.seq_len} (one H200 at ouro-1.4b, 50% MFU, consumes "
            f"{demand:,.0f} tokens/s)"
        )
        print(f"{'dtype':>7} {'workers':>8} {'tokens/s':>12} {'tokens/s/worker':>16} {'x one H200':>11}")
        results["loader"] = []
        best_of: dict[tuple[str, int], float] = {}
        for _ in range(
            args.rounds
        ):  # interleaved rounds, best of each: other load on the machine hits all alike
            for name, shards in (("int32", int32), ("uint16", uint16)):
                for workers in args.loader_workers:
                    rate = bench_loader(shards, args.seq_len, args.batch_size, workers, args.batches)
                    best_of[name, workers] = max(rate, best_of.get((name, workers), 0.0))
        for (name, workers), rate in best_of.items():
            per_worker = rate / max(workers, 1)
            print(f"{name:>7} {workers:>8} {rate:>12,.0f} {per_worker:>16,.0f} {rate / demand:>10.1f}x")
            results["loader"].append(dict(dtype=name, workers=workers, tokens_per_s=rate))
        best = max(
            r["tokens_per_s"] / max(r["workers"], 1) for r in results["loader"] if r["dtype"] == "uint16"
        )
        need = math.ceil(GPUS_PER_NODE * demand / best)
        print(
            f"\none H200 needs {demand:,.0f} tokens/s; a node of {GPUS_PER_NODE} needs "
            f"{GPUS_PER_NODE * demand:,.0f}: {need} loader worker(s) at {best:,.0f} tokens/s each "
            f"(local shards, this CPU)"
        )
        results.update(h200_tokens_per_s=demand, workers_per_node=need)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
