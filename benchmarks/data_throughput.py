"""Data pipeline throughput: ``ouro prepare`` tokens/s per worker, and loader tokens/s against what a training
step consumes.

    .venv/bin/python benchmarks/data_throughput.py                      # built-in corpus, quickstart-sized model
    .venv/bin/python benchmarks/data_throughput.py --workers 1 2 --seq_len 1024 --batch_size 4

Shards go to a temporary folder, so every run tokenizes from scratch; the built-in corpus and tokenizer come
from the cache (built on first use).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


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


def bench_loader(shards: Path, seq_len: int, batch_size: int, workers: int, batches: int) -> float:
    from ouro.data.pretrain import PretrainDataModule

    dm = PretrainDataModule(
        sources=[str(shards)], val_source=None, seq_len=seq_len, batch_size=batch_size, num_workers=workers
    )
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size * seq_len / (time.perf_counter() - start)


def bench_step(vocab: int, seq_len: int, batch_size: int, steps: int) -> float:
    import torch

    from ouro.config import OuroConfig
    from ouro.module import OuroLM

    config = OuroConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=1e4,
        total_ut_steps=4,
    )
    module = OuroLM(model=config)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab, (batch_size, seq_len + 1))
    batch = {
        "input_ids": ids[:, :-1],
        "labels": ids[:, 1:],
        "doc_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
    }
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        result, _, _ = module.compute_loss(batch)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return batch_size * seq_len / (sum(times[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="prepare worker counts to compare"
    )
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--loader_workers", type=int, default=1)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (quickstart-sized model)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of the training step (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from ouro.data.builtin import builtin_dir, builtin_tokenizer_path, write_corpus

    tokenizer = builtin_tokenizer_path()
    files = write_corpus(builtin_dir())["train"]
    root = Path(tempfile.mkdtemp(prefix="ouro-bench-"))
    try:
        print(
            f"corpus: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB; "
            f"{os.cpu_count()} CPUs"
        )
        results = [bench_prepare(files, tokenizer, w, root) for w in args.workers]
        print("\nprepare (tokenize + write litdata shards)")
        print(f"{'workers':>8} {'tokens':>10} {'seconds':>8} {'tokens/s':>10} {'tokens/s/worker':>16}")
        for r in results:
            print(
                f"{r['workers']:>8} {r['tokens']:>10} {r['seconds']:>8.1f} {r['tokens_per_s']:>10.0f} "
                f"{r['per_worker']:>16.0f}"
            )
        loader = bench_loader(
            results[0]["out"], args.seq_len, args.batch_size, args.loader_workers, args.batches
        )
        from tokenizers import Tokenizer

        step = bench_step(
            Tokenizer.from_file(str(tokenizer)).get_vocab_size(), args.seq_len, args.batch_size, args.steps
        )
        print(
            f"\nloader ({args.loader_workers} workers, batch {args.batch_size} x {args.seq_len}): {loader:,.0f} tokens/s"
        )
        print(f"training step (quickstart model, same batch):          {step:,.0f} tokens/s")
        print(f"loader headroom: {loader / step:.1f}x what the step consumes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
