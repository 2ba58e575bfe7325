"""Achieved matmul FLOP/s on this machine: the roofline the training benchmarks report fractions of.

python benchmarks/matmul_roofline.py                      # CPU fp32, or CUDA bf16 when a GPU is present
python benchmarks/matmul_roofline.py --sizes 1024 4096 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import H100_BF16_PEAK, machine, matmul_rate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 1024, 2048], help="square matrix sizes to time"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    print(machine())
    for size in args.sizes:
        rate = matmul_rate(device, dtype, size)
        extra = f" ({rate / H100_BF16_PEAK:.1%} of 989 TFLOP/s)" if device.type == "cuda" else ""
        print(f"matmul {size}x{size} {dtype}: {rate / 1e9:.1f} GFLOP/s{extra}")


if __name__ == "__main__":
    main()
