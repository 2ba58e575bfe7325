"""`Plan`: a recipe's memory per GPU, its largest micro-batch, FLOPs per token and days, from fake steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from ouro.errors import PlanError
from ouro.plan.gpus import GPU
from ouro.plan.spec import PlanSpec
from ouro.plan.step import StepCount, count_step, fake_world
from ouro.plan.wrapping import strategy_kind

#: A step fits when its peak leaves this fraction of the GPU's memory free (allocator fragmentation, CUDA
#: context, NCCL buffers and kernels' workspaces the plan does not see).
HEADROOM = 0.10


@dataclass
class Plan:
    """What one stage costs per GPU and in total (bytes per GPU; FLOPs per token count every pass)."""

    recipe: str
    gpu: str
    world_size: int
    strategy: str
    precision: str
    micro_batch: int
    seq_len: int
    total_ut_steps: int
    num_hidden_layers: int
    parameters: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    """Peak minus parameters, gradients and optimizer state: activations, gathered parameters, buffers."""
    peak_bytes: int
    gpu_bytes: int
    headroom: float
    """Fraction of the GPU's memory left free at the peak."""
    fits: bool
    """The peak leaves at least `HEADROOM` of the GPU free."""
    max_micro_batch: int | None
    """Largest micro-batch whose peak leaves `HEADROOM` free (0: none; None: not searched)."""
    flops_per_token: float
    """Model FLOPs per trained token (forward, loss, backward; all passes; no recomputation)."""
    hardware_flops_per_token: float
    """FLOPs per token the GPU runs, activation checkpointing's recomputation included."""
    mfu: float
    tokens_per_step: int
    step_seconds: float | None
    """One optimizer step at ``mfu`` of the GPU's dense bf16 peak (None: the peak is not known)."""
    max_tokens: int | None
    est_days: float | None
    """Days for the stage's token budget (``TokenBudget``) at ``mfu`` on ``world_size`` GPUs."""
    advice: list[str] = field(default_factory=list)
    plan_seconds: float = 0.0


def make_plan(spec: PlanSpec, gpu: GPU, mfu: float = 0.4, search_micro_batch: bool = True) -> Plan:
    """Run the fake steps of ``spec`` (a second one, one sample larger, when searching the micro-batch)."""
    if not 0 < mfu <= 1:
        raise PlanError(f"--mfu must lie in (0, 1], got {mfu}")
    started = time.perf_counter()
    with fake_world(spec.world_size):
        count = count_step(spec, fake=True)
    larger = None
    if search_micro_batch:
        with fake_world(spec.world_size):
            larger = count_step(replace(spec, micro_batch=spec.micro_batch + 1), fake=True)
    budget = (1 - HEADROOM) * gpu.memory_bytes
    resident = count.params_bytes + count.grads_bytes + count.optimizer_bytes
    flops_per_token = count.model_flops / count.tokens
    global_rate = (
        mfu * gpu.bf16_flops * spec.world_size / flops_per_token
    )  # tokens per second (0: peak unknown)
    model = spec.module.get("model") or {}
    plan = Plan(
        recipe=" + ".join(spec.sources) or spec.name,
        gpu=gpu.label,
        world_size=spec.world_size,
        strategy=describe_strategy(spec),
        precision=spec.precision,
        micro_batch=spec.micro_batch,
        seq_len=spec.seq_len,
        total_ut_steps=int(model.get("total_ut_steps", 4)),
        num_hidden_layers=int(model.get("num_hidden_layers", 24)),
        parameters=count.parameters,
        params_bytes=count.params_bytes,
        grads_bytes=count.grads_bytes,
        optimizer_bytes=count.optimizer_bytes,
        activations_bytes=max(0, count.peak_bytes - resident),
        peak_bytes=count.peak_bytes,
        gpu_bytes=gpu.memory_bytes,
        headroom=1 - count.peak_bytes / gpu.memory_bytes,
        fits=count.peak_bytes <= budget,
        max_micro_batch=None if larger is None else largest_micro_batch(spec, count, larger, budget),
        flops_per_token=flops_per_token,
        hardware_flops_per_token=count.hardware_flops / count.tokens,
        mfu=mfu,
        tokens_per_step=spec.tokens_per_step,
        step_seconds=spec.tokens_per_step / global_rate if global_rate else None,
        max_tokens=spec.max_tokens,
        est_days=spec.max_tokens / global_rate / 86400 if spec.max_tokens and global_rate else None,
    )
    plan.advice = advice(spec, plan)
    plan.plan_seconds = time.perf_counter() - started
    return plan


def largest_micro_batch(spec: PlanSpec, count: StepCount, larger: StepCount, budget: float) -> int:
    """The largest micro-batch within ``budget``: the forward/backward peak grows by the same amount with every
    sample (measured between ``count`` and ``larger``, one sample apart); the optimizer step does not grow."""
    per_sample = larger.forward_backward_peak - count.forward_backward_peak
    carried = count.peak_bytes - count.forward_backward_peak if count.peak_bytes > count.optimizer_peak else 0
    if count.optimizer_peak > budget:
        return 0
    fixed = count.forward_backward_peak + max(carried, 0) - spec.micro_batch * per_sample
    if per_sample <= 0:
        return spec.micro_batch if count.peak_bytes <= budget else 0
    return max(0, math.floor((budget - fixed) / per_sample))


def describe_strategy(spec: PlanSpec) -> str:
    kind = strategy_kind(spec.strategy)
    if kind == "fsdp":
        return f"FSDP1 {spec.strategy.sharding_strategy.name}"
    if kind == "fsdp2":
        return f"FSDP2 reshard_after_forward={spec.strategy.reshard_after_forward}"
    return {"ddp": "DDP", "single": "one device"}[kind]


def advice(spec: PlanSpec, plan: Plan) -> list[str]:
    """What to change when the step does not fit with `HEADROOM` to spare (empty when it does)."""
    if plan.fits:
        return []
    lines = []
    if not spec.module.get("activation_checkpointing"):
        lines.append("turn on model.activation_checkpointing (recompute each layer call in backward)")
    kind = strategy_kind(spec.strategy)
    if kind == "fsdp" and spec.strategy.sharding_strategy.name == "SHARD_GRAD_OP":
        lines.append(
            "use sharding_strategy FULL_SHARD: gathered layers are freed after every call instead of kept "
            "for the whole step"
        )
    if kind == "fsdp2" and not spec.strategy.reshard_after_forward:
        lines.append("use reshard_after_forward: true (gathered layers freed after every call)")
    if plan.max_micro_batch is not None and 0 < plan.max_micro_batch < spec.micro_batch:
        lines.append(
            f"lower data.init_args.batch_size to {plan.max_micro_batch} and raise "
            "trainer.accumulate_grad_batches to keep the tokens per step"
        )
    if kind in ("fsdp", "fsdp2"):
        lines.append(
            "use more GPUs: parameters, gradients and optimizer state shrink with the world size "
            f"({(plan.params_bytes + plan.grads_bytes + plan.optimizer_bytes) / 2**30:.2f} GiB here)"
        )
    if plan.max_micro_batch == 0:
        lines.append("micro-batch 1 does not fit either: shorten data.init_args.seq_len or shard further")
    return lines
