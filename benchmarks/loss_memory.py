"""Peak extra memory of the per-step cross-entropy (forward + backward): chunked vs naive full logits.

Two chunked variants: `ouro.cross_entropy.per_step_cross_entropy` (``chunked``: logits recomputed in backward;
what validation and Stage II use) and `cross_entropy_with_known_gradient` (``one_pass``: gradients computed in
forward; what `OuroLM`'s Stage I training uses). The naive one materialises every step's (tokens, vocab) logits and calls `F.cross_entropy`. Each variant runs in a fresh
subprocess: its inputs are allocated first, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``),
then forward + backward run and the new peak minus the resident memory before them is the loss's extra memory.
The gradients of the LM head and of the hidden states are part of both figures (``grads`` column).

    .venv/bin/python benchmarks/loss_memory.py                      # seq 4096, vocab 49152, T 4, hidden 2048
    .venv/bin/python benchmarks/loss_memory.py --dtype fp32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _measure import run_worker  # benchmarks/ is on sys.path when a script runs

VARIANTS = ("chunked", "one_pass", "naive")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=4096, help="tokens (one sequence)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=4, help="recurrent steps T (one loss per step)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size")
    parser.add_argument(
        "--chunk", type=int, default=4096, help="chunk_size of the chunked variant (OuroLM's default)"
    )
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default="bf16",
        help="bf16: under CPU autocast, as training runs; fp32: plain fp32",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Make VmHWM (peak RSS) equal to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from ouro.cross_entropy import (
        CPU_MAX_CHUNK,
        IGNORE_INDEX,
        cross_entropy_with_known_gradient,
        per_step_cross_entropy,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = [torch.randn(args.seq, args.hidden).requires_grad_() for _ in range(args.steps)]
    weight = (0.02 * torch.randn(args.vocab, args.hidden)).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.seq,))
    step_weights = torch.softmax(torch.randn(args.seq, args.steps), -1)  # like p(t): every step gets gradient

    def naive() -> torch.Tensor:
        return torch.stack(
            [
                F.cross_entropy(h @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="none")
                for h in hidden
            ],
            -1,
        )

    def weighted(ce: torch.Tensor) -> torch.Tensor:
        return (ce.float() * step_weights).sum() / args.seq

    def chunked() -> torch.Tensor:
        return weighted(per_step_cross_entropy(hidden, weight, targets, args.chunk))

    def one_pass() -> torch.Tensor:
        ce, carrier = cross_entropy_with_known_gradient(
            hidden, weight, targets, step_weights / args.seq, args.chunk
        )
        return weighted(ce) + carrier

    loss_fn = {"chunked": chunked, "one_pass": one_pass, "naive": lambda: weighted(naive())}[args.worker]
    before = _status_mib("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        loss = loss_fn()
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    grads = sum(t.grad.numel() * t.grad.element_size() for t in [*hidden, weight]) / 2**20
    block = min(args.chunk, CPU_MAX_CHUNK)
    return {
        "variant": args.worker,
        "dtype": args.dtype,
        "seq": args.seq,
        "vocab": args.vocab,
        "steps": args.steps,
        "hidden": args.hidden,
        "rows_per_block": block if args.worker != "naive" else None,
        "loss": float(loss),
        "seconds": elapsed,
        "rss_before_mib": before,
        "peak_extra_mib": peak - before,
        "grads_mib": grads,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = []
    for variant in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--seq",
            str(args.seq),
            "--vocab",
            str(args.vocab),
            "--steps",
            str(args.steps),
            "--hidden",
            str(args.hidden),
            "--chunk",
            str(args.chunk),
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
        ]
        results.append(run_worker(command, variant))
    naive = results[-1]
    print(
        f"per-step cross-entropy forward+backward, seq {args.seq}, vocab {args.vocab}, T {args.steps}, "
        f"hidden {args.hidden}, {args.dtype}"
    )
    print("variant | rows/block | peak extra MiB | of which grads MiB | seconds | loss")
    for r in results:
        print(
            f"{r['variant']} | {r['rows_per_block'] or args.seq} | {r['peak_extra_mib']:.0f} | {r['grads_mib']:.0f} | "
            f"{r['seconds']:.1f} | {r['loss']:.5f}"
        )
    ratios = {}
    for r in results[:-1]:
        ratio = r["peak_extra_mib"] / naive["peak_extra_mib"]
        beyond = (r["peak_extra_mib"] - r["grads_mib"]) / (naive["peak_extra_mib"] - naive["grads_mib"])
        ratios[r["variant"]] = {"ratio": ratio, "ratio_without_grads": beyond}
        print(
            f"{r['variant']} / naive: {ratio:.3f} of the peak extra memory ({beyond:.3f} not counting the "
            "gradients)"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
