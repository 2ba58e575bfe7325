"""Every shipped GPU recipe (both branches, every stage, 4K to 64K) fits an H100 80GB with 10 % headroom at its
stated micro-batch, as `ouro plan` plans it on fake tensors at the recipe's real size and world size."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from ouro.plan import HEADROOM, gpu_named, make_plan, spec_from_recipes
from ouro.plan.shipped import gpu_recipes

ROOT = Path(__file__).resolve().parent.parent


def _plan(configs: list[str]):
    return make_plan(spec_from_recipes(configs), gpu_named("h100-80gb"), search_micro_batch=False)


def test_the_shipped_gpu_recipes_are_all_found():
    stacks = gpu_recipes(ROOT / "recipes")
    names = {Path(stack[-1]).relative_to(ROOT / "recipes").as_posix() for stack in stacks}
    stages = {"stable", "ct_annealing", "longct", "midtraining", "reasoning_sft", "gate"}
    assert {f"{s}.yaml" for s in stages | {"warmup"}} <= names
    assert {f"ouro-2.6b/{s}.yaml" for s in stages} <= names
    assert all(len(stack) in (1, 2) for stack in stacks)


def test_every_shipped_gpu_recipe_fits_an_h100_with_headroom():
    # The costliest plans (48 layers; the 8-pass warmup) first, so that the two workers end together.
    stacks = sorted(gpu_recipes(ROOT / "recipes"), key=lambda s: (-len(s), "warmup" not in s[-1]))
    # One fake step per recipe, two recipes at a time (the test machine has 2 cores). The workers fork from a
    # server that imported this module (torch, Lightning, the planner) once, instead of each importing it (spawn).
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        plans = list(pool.map(_plan, stacks))
    problems = [
        f"{plan.recipe}: peak {plan.peak_bytes / 2**30:.1f} GiB, headroom {plan.headroom:.1%} "
        f"(needs {HEADROOM:.0%}); {'; '.join(plan.advice)}"
        for plan in plans
        if not plan.fits
    ]
    assert not problems, "\n".join(problems)
    assert all(plan.parameters > 1e9 and plan.seq_len >= 4096 for plan in plans)  # the real sizes
