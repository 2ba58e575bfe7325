"""Shared measurement helpers for the benchmark scripts: timing, matmul roofline, FLOP counting, machine info.

Kept out of the ``ouro`` package: benchmarks measure the package, they are not part of it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

#: Dense bf16 peak of an H100 / H200 SXM (no sparsity), the usual MFU denominator.
H100_BF16_PEAK = 989e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 2048, iters: int = 10) -> float:
    """Achieved FLOP/s of a square ``size`` x ``size`` matmul: the roofline a training step is compared with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_calls(lambda: a @ b, device, warmup=3, iters=iters)
    return 2 * size**3 / median(times)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs that ``torch.utils.flop_counter`` sees in one call of ``fn`` (forward and backward).

    CPU SDPA kernels are invisible to the counter, so attention runs under the MATH backend while counting.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return float(counter.get_total_flops())


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast (mixed precision, fp32 weights) or nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def machine() -> str:
    """One line naming the hardware and software the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"CPU {cpu} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"]
    if torch.cuda.is_available():
        parts.insert(0, f"GPU {torch.cuda.get_device_name()}")
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def run_worker(command: list[str], label: str) -> dict:
    """Run a benchmark worker in a fresh process (its own memory high-water mark) and parse the JSON line it
    prints last; exit with the worker's stderr if it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the {label} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
