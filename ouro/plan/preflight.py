"""The plan ``ouro fit`` makes before a GPU run: one warning line when the step will not fit the GPU.

It runs only when the accelerator is a CUDA GPU (a CPU fit skips it at no cost), only on global rank 0, and
before the run's process group starts; ``--skip_plan`` turns it off.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ouro.plan.estimate import HEADROOM, make_plan
from ouro.plan.gpus import GPU, GPUS
from ouro.plan.spec import PlanSpec, spec_from_fit


def device_gpu(index: int = 0) -> GPU:
    """This machine's CUDA device ``index`` as a `GPU` (peak FLOP/s known for the GPUs `GPUS` lists)."""
    properties = torch.cuda.get_device_properties(index)
    known = [g for g in GPUS.values() if g.label.split()[0] in properties.name]
    return GPU(properties.name, properties.total_memory, known[0].bf16_flops if known else 0.0)


def fit_warning(spec: PlanSpec, gpu: GPU) -> str | None:
    """One line when the plan of ``spec`` leaves less than `HEADROOM` of ``gpu`` free, else None."""
    plan = make_plan(spec, gpu, search_micro_batch=False)
    if plan.fits:
        return None
    gib = 2**30
    fix = plan.advice[0] if plan.advice else "see `ouro plan`"
    return (
        f"ouro: warning: the plan says a training step needs {plan.peak_bytes / gib:.1f} GiB per GPU, more than "
        f"{1 - HEADROOM:.0%} of this {gpu.label}'s {gpu.memory_bytes / gib:.1f} GiB; {fix} (`ouro plan` shows "
        "the details; --skip_plan skips this check)"
    )


def plan_before_fit(trainer: Any, module: Any, datamodule: Any, skip: bool = False) -> str | None:
    """Plan the fit about to start and print the warning line when it will not fit; returns that line."""
    if skip or not isinstance(trainer.accelerator, CUDAAccelerator) or rank_zero_only.rank != 0:
        return None
    spec = spec_from_fit(trainer, module, datamodule)
    if spec is None:
        return None
    warning = fit_warning(spec, device_gpu())
    if warning:
        print(warning, file=sys.stderr)
    return warning
