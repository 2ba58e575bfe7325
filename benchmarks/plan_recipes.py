"""How long `ouro plan` takes for every shipped GPU recipe, and what it says (the table in docs/scale-out.md).

    python benchmarks/plan_recipes.py [--gpu h100-80gb] [--mfu 0.4] [--workers 2]

Each recipe is planned in a fresh worker process (fake tensors, no GPU); the time is the plan's own (after
imports), in CPU seconds and wall seconds. Prints one Markdown table row per recipe.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from ouro.plan import gpu_named, make_plan, spec_from_recipes
from ouro.plan.shipped import gpu_recipes


def plan_one(configs: list[str], gpu: str, mfu: float) -> tuple[list[str], object, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    plan = make_plan(spec_from_recipes(configs), gpu_named(gpu), mfu, search_micro_batch=True)
    return configs, plan, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", default="h100-80gb")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    stacks = gpu_recipes()
    print(
        "| recipe | GPUs | micro-batch x seq | peak GiB | headroom | largest micro-batch | days | plan CPU s | plan wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(plan_one, stack, args.gpu, args.mfu) for stack in stacks]
        for future in futures:
            configs, plan, cpu, wall = future.result()
            print(
                f"| {' + '.join(configs)} | {plan.world_size} | {plan.micro_batch} x {plan.seq_len:,} "
                f"| {plan.peak_bytes / 2**30:.1f} | {plan.headroom:.0%} | {plan.max_micro_batch} "
                f"| {plan.est_days:.1f} | {cpu:.1f} | {wall:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
