"""``ouro plan``: the memory and time of a recipe at its real size, on a CPU, from fake tensors."""

from __future__ import annotations

import json as json_module
from dataclasses import asdict
from pathlib import Path

from ouro.errors import PlanError, RecipeError, human_bytes
from ouro.plan.estimate import HEADROOM, Plan, make_plan
from ouro.plan.gpus import GPUS, gpu_named
from ouro.plan.spec import spec_from_recipes
from ouro.recipe_yaml import read_recipe


def plan(
    recipes: list[str] | None = None,
    pipeline: str | None = None,
    gpu: str = "h100-80gb",
    world_size: int | None = None,
    mfu: float = 0.4,
    json: bool = False,
    micro_batch_search: bool = True,
) -> None:
    """Plan one training step of a recipe at its real size on fake tensors (no GPU, no real memory): memory per
    GPU (parameters, gradients, optimizer state, activations, peak, headroom), the largest micro-batch that fits,
    FLOPs per token (every pass) and the days the stage's token budget takes.

    Args:
        recipes: Recipe files (``--config A --config B`` also works), composed as ``ouro fit --config A
            --config B`` composes them (later files win).
        pipeline: A pipeline file (``recipes/pipelines/*.yaml``): plan every stage and add the whole pipeline's
            days.
        gpu: The GPU to plan for: {gpus}.
        world_size: GPUs in the run (default: the recipe's ``trainer.num_nodes`` x ``trainer.devices``).
        mfu: Model FLOPs utilisation the time estimate assumes (fraction of the GPU's dense bf16 peak).
        json: Print one JSON object per recipe (a list for a pipeline) instead of the table.
        micro_batch_search: Also plan one sample more to find the largest micro-batch that fits.
    """
    device = gpu_named(gpu)
    if bool(recipes) == bool(pipeline):
        raise PlanError("ouro plan needs --config RECIPE (repeatable) or --pipeline FILE, not both")
    stages = [list(recipes)] if recipes else pipeline_stages(pipeline)
    plans = [
        make_plan(spec_from_recipes(files, world_size), device, mfu, micro_batch_search) for files in stages
    ]
    if json:
        payload = [asdict(p) for p in plans]
        print(json_module.dumps(payload[0] if recipes else payload, indent=2))
        return
    for item in plans:
        print(format_plan(item))
    if pipeline:
        print(pipeline_line(plans, device.label))


plan.__doc__ = plan.__doc__.replace("{gpus}", ", ".join(GPUS))


def pipeline_stages(path: str) -> list[list[str]]:
    """The recipe files of each stage of a pipeline file."""
    data = read_recipe(path) if Path(path).is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise RecipeError(f"--pipeline {path}: not a pipeline file with a list of stages")
    stages = []
    for stage in data["stages"]:
        recipe = stage.get("recipe") if isinstance(stage, dict) else None
        stages.append([recipe] if isinstance(recipe, str) else list(recipe or []))
    return stages


def format_plan(plan: Plan) -> str:
    """The plan as a few aligned lines."""
    gib = 2**30
    verdict = (
        f"fits with {HEADROOM:.0%} headroom" if plan.fits else f"DOES NOT FIT with {HEADROOM:.0%} headroom"
    )
    if plan.max_micro_batch is None:
        micro = "not searched"
    elif plan.max_micro_batch == 0:
        micro = "none fits"
    else:
        micro = str(plan.max_micro_batch)
    lines = [
        f"ouro plan: {plan.recipe}",
        f"  run         {plan.world_size} x {plan.gpu}, {plan.strategy}, {plan.precision}; "
        f"{plan.parameters / 1e9:.2f}B parameters, {plan.num_hidden_layers} layers x {plan.total_ut_steps} "
        f"passes; micro-batch {plan.micro_batch} x {plan.seq_len:,} tokens",
        f"  per GPU     parameters {human_bytes(plan.params_bytes)}, gradients {human_bytes(plan.grads_bytes)}, "
        f"optimizer {human_bytes(plan.optimizer_bytes)}, activations and buffers "
        f"{human_bytes(plan.activations_bytes)}",
        f"  peak        {plan.peak_bytes / gib:.1f} GiB of {plan.gpu_bytes / gib:.1f} GiB "
        f"(headroom {plan.headroom:.1%}): {verdict}",
        f"  micro-batch largest with {HEADROOM:.0%} headroom: {micro}",
        f"  compute     {plan.flops_per_token:.3g} FLOPs per token, all {plan.total_ut_steps} passes "
        f"({plan.hardware_flops_per_token:.3g} with recomputation)",
        f"  time        {plan.step_seconds or 0:.2f} s per step of {plan.tokens_per_step:,} tokens at "
        f"{plan.mfu:.0%} MFU"
        + (
            f"; {plan.max_tokens / 1e9:,.0f}B tokens: {plan.est_days:.1f} days on {plan.world_size} GPUs"
            if plan.est_days is not None
            else ""
        ),
    ]
    lines += [f"  change      {line}" for line in plan.advice]
    return "\n".join(lines)


def pipeline_line(plans: list[Plan], gpu_label: str) -> str:
    """One line for a whole pipeline: its tokens and days at the plans' MFU."""
    tokens = sum(p.max_tokens or 0 for p in plans)
    days = sum(p.est_days or 0 for p in plans)
    gpus = max(p.world_size for p in plans)
    return (
        f"pipeline: {tokens / 1e12:.2f}T tokens on up to {gpus} {gpu_label} at {plans[0].mfu:.0%} MFU: "
        f"{days:.1f} days"
    )
