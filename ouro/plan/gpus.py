"""The GPUs a plan can be made for: memory as CUDA reports it (``total_memory``) and dense bf16 peak FLOP/s."""

from __future__ import annotations

from dataclasses import dataclass

from ouro.errors import PlanError

GiB = 2**30


@dataclass(frozen=True)
class GPU:
    """One accelerator model."""

    label: str
    """How the plan names it."""
    memory_bytes: int
    """Total device memory as ``torch.cuda.get_device_properties(i).total_memory`` reports it."""
    bf16_flops: float
    """Dense bf16 tensor-core peak, FLOP/s (the MFU denominator)."""


GPUS = {
    "a100-40gb": GPU("A100 40GB", int(39.39 * GiB), 312e12),
    "a100-80gb": GPU("A100 80GB", int(79.15 * GiB), 312e12),
    "h100-80gb": GPU("H100 80GB", int(79.11 * GiB), 989e12),
    "h200-141gb": GPU("H200 141GB", int(139.81 * GiB), 989e12),
}


def gpu_named(name: str) -> GPU:
    """The `GPU` called ``name`` (``h100-80gb`` ...); a clear error lists the known ones."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise PlanError(f"--gpu {name!r} is not known; choose one of {', '.join(GPUS)}") from None
