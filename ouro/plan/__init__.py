"""``ouro plan``: a recipe's memory per GPU and its time, at its real size and world size, on a CPU.

One training step runs on fake tensors (shapes only) with the recipe's real model, strategy wrapping (DDP, FSDP1,
FSDP2 through a fake process group), activation checkpointing, precision and optimizer, while every tensor
storage alive is counted (`live_memory`), every FLOP is attributed to its phase (`flops`) and FlashAttention's
kernels are costed as on the GPU (`flash`). `estimate.make_plan` turns the counts into a `Plan`.
"""

from ouro.plan.estimate import HEADROOM, Plan, make_plan
from ouro.plan.gpus import GPUS, gpu_named
from ouro.plan.spec import PlanSpec, spec_from_recipes

__all__ = ["GPUS", "HEADROOM", "Plan", "PlanSpec", "gpu_named", "make_plan", "spec_from_recipes"]
