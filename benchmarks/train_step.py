"""Training-step throughput of `OuroLM` on CPU: tokens/s, achieved FLOP/s and peak memory, fp32 and bf16.

One training step = forward of every pass, the Stage I loss (chunked cross-entropy of every step), backward and
an AdamW step, exactly as `OuroLM.training_step` computes it. FLOPs come from `ouro.model.flops_per_token`
(every pass counted) and are cross-checked with `torch.utils.flop_counter.FlopCounterMode` under the MATH SDPA
backend (CPU SDPA kernels are not counted otherwise). The achieved FLOP/s is compared with matmul FLOP/s
measured in the same process and dtype on the model's own GEMM shapes (forward and both backward products).
Each dtype runs in a fresh subprocess so that its peak RSS is its own.

    .venv/bin/python benchmarks/train_step.py                 # bench preset, batch 8, sequence 256
    .venv/bin/python benchmarks/train_step.py --json out.json --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from _measure import run_worker  # benchmarks/ is on sys.path when a script runs

DTYPES = ("fp32", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench", help="OuroConfig preset (default: bench)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per dtype")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="what to measure")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine more threads wait on each other)",
    )
    parser.add_argument(
        "--chunk", type=int, default=None, help="loss_chunk_size of OuroLM (default: OuroLM's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=DTYPES, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def gemm_shapes(config, tokens: int) -> list[tuple[int, int, int, int]]:
    """(M, K, N, count) of every matmul of one training step: forward, grad-input and grad-weight products."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    calls = config.total_ut_steps * config.num_hidden_layers
    linear = [
        (h, h, 2 * calls),
        (h, kv, 2 * calls),
        (h, i, 2 * calls),
        (i, h, calls),
        (h, v, config.total_ut_steps),
    ]
    shapes = []
    for k, n, count in linear:
        shapes += [(tokens, k, n, count), (tokens, n, k, count), (n, tokens, k, count)]
    return shapes


class MatmulRoofline:
    """Matmul FLOP/s on a step's GEMM shapes, each timed into a preallocated output (no allocation cost)."""

    def __init__(self, shapes, dtype) -> None:
        import torch

        self.shapes = shapes
        self.operands = [
            (torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype))
            for m, k, n, _ in shapes
        ]
        self.best = 0.0

    def measure(self) -> float:
        """One timing of every shape; returns the FLOP/s of their mix, weighted as in the step."""
        import torch

        total_flops = total_time = 0.0
        for (m, k, n, count), (a, b, out) in zip(self.shapes, self.operands):
            torch.mm(a, b, out=out)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - start
            flops = 2.0 * m * k * n
            total_flops += flops * count
            total_time += elapsed * count
            self.best = max(self.best, flops / elapsed)
        return total_flops / total_time


def worker(args: argparse.Namespace) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ouro.config import OuroConfig
    from ouro.model import flops_per_token
    from ouro.module import OuroLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.worker == "bf16" else torch.float32
    baseline = rss_mib()
    config = OuroConfig.preset(args.preset)
    module = OuroLM(model=config, **({"loss_chunk_size": args.chunk} if args.chunk else {})).train()
    optimizer = module.configure_optimizers()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    tokens = args.batch * args.seq

    def loss_and_backward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = module.compute_loss(batch)[0].loss
        loss.backward()
        return loss

    def step():
        loss_and_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed_step() -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    times = [timed_step() for _ in range(args.steps)]
    peak = peak_rss_mib()  # before the roofline's operands exist

    # Steps and matmul timings alternate, so both see the same load on a shared machine.
    analytic = flops_per_token(config, args.seq) * tokens
    roofline = MatmulRoofline(gemm_shapes(config, tokens), dtype)
    fractions, mixes = [], []
    for _ in range(args.steps):
        step_time = timed_step()
        mixes.append(roofline.measure())
        times.append(step_time)
        fractions.append(analytic / step_time / mixes[-1])

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_and_backward()
    optimizer.zero_grad(set_to_none=True)
    step_time = statistics.median(times)
    return {
        "dtype": args.worker,
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "loss_chunk_size": module.loss_chunk_size,
        "step_s_median": step_time,
        "step_s_min": min(times),
        "tokens_per_s": tokens / step_time,
        "flops_per_step_analytic": analytic,
        "flops_per_step_counted": counter.get_total_flops(),
        "achieved_flops": analytic / step_time,
        "matmul_flops_mix": statistics.median(mixes),
        "matmul_flops_best_shape": roofline.best,
        "fraction_of_matmul": statistics.median(fractions),
        "peak_rss_mib": peak,
        "peak_rss_growth_mib": peak - baseline,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from ouro.cross_entropy import CPU_MAX_CHUNK

    results = []
    for dtype in args.dtypes:
        command = [
            sys.executable,
            __file__,
            "--worker",
            dtype,
            "--preset",
            args.preset,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
        ]
        if args.chunk:
            command += ["--chunk", str(args.chunk)]
        results.append(run_worker(command, dtype))

    r0 = results[0]
    print(
        f"train step of OuroLM (Stage I), preset {r0['preset']}, batch {r0['batch']} x seq {r0['seq']}, "
        f"{r0['threads']} threads, loss_chunk_size {r0['loss_chunk_size']} (on CPU at most {CPU_MAX_CHUNK} rows "
        "at once); FLOPs count every pass"
    )
    header = (
        "dtype",
        "step s",
        "tokens/s",
        "GFLOP/step",
        "counted",
        "GFLOP/s",
        "matmul GFLOP/s",
        "of matmul",
        "peak RSS MiB",
        "growth MiB",
    )
    print(" | ".join(header))
    for r in results:
        print(
            " | ".join(
                [
                    r["dtype"],
                    f"{r['step_s_median']:.3f}",
                    f"{r['tokens_per_s']:,.0f}",
                    f"{r['flops_per_step_analytic'] / 1e9:.1f}",
                    f"{r['flops_per_step_counted'] / 1e9:.1f}",
                    f"{r['achieved_flops'] / 1e9:.1f}",
                    f"{r['matmul_flops_mix'] / 1e9:.1f}",
                    f"{100 * r['fraction_of_matmul']:.0f}%",
                    f"{r['peak_rss_mib']:.0f}",
                    f"{r['peak_rss_growth_mib']:.0f}",
                ]
            )
        )
    print(
        "GFLOP/step: flops_per_token x tokens (causal attention counted as half the square); counted: "
        "FlopCounterMode under the MATH backend (full-square attention).\n"
        "matmul GFLOP/s: the step's own GEMM shapes timed alone in this process and dtype, alternating with "
        "the steps; 'of matmul' is the median over those pairs."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
