"""CPU seconds of `ouro plan`'s fake step for every shipped GPU recipe, one at a time, and whether the plans stay
the same (for work on the planner's speed).

    python benchmarks/plan_speed.py --save plans.json     # before a change: keep the plans
    python benchmarks/plan_speed.py --check plans.json    # after it: the same plans, field by field?
    python benchmarks/plan_speed.py recipes/warmup.yaml   # only the stacks whose last file's path has this

Each recipe is planned as `tests/test_plan_recipes.py` plans it (an H100 80GB, no micro-batch search), one after
another in this process, so that the CPU seconds of one plan are its own (run with OMP_NUM_THREADS=1 on a shared
machine). ``--check`` compares every field of `ouro.plan.Plan` but ``plan_seconds``: exactly, floats to 1e-12
relative, and exits 1 when one differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from ouro.plan import gpu_named, make_plan, spec_from_recipes
from ouro.plan.shipped import gpu_recipes


def same(value: object, reference: object) -> bool:
    """Equal, floats within 1e-12 relative (timing-free arithmetic may only reorder)."""
    if isinstance(value, float) and isinstance(reference, float):
        return math.isclose(value, reference, rel_tol=1e-12, abs_tol=0.0)
    return value == reference


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "only", nargs="*", help="plan only the stacks whose last file's path contains one of these"
    )
    parser.add_argument("--recipes", default="recipes")
    parser.add_argument("--save", type=Path, help="write the plans (JSON) here")
    parser.add_argument("--check", type=Path, help="compare the plans with ones --save wrote")
    args = parser.parse_args()
    reference = json.loads(args.check.read_text()) if args.check else None
    plans, total, differ = {}, 0.0, 0
    for stack in gpu_recipes(args.recipes):
        name = " + ".join(stack)
        if args.only and not any(text in stack[-1] for text in args.only):
            continue
        cpu = time.process_time()
        plan = make_plan(spec_from_recipes(stack), gpu_named("h100-80gb"), search_micro_batch=False)
        cpu = time.process_time() - cpu
        total += cpu
        fields = dataclasses.asdict(plan)
        fields.pop("plan_seconds")
        plans[name] = fields
        verdict = ""
        if reference is not None:
            if name not in reference:
                verdict = "not in the reference"
            else:
                changed = [key for key, value in fields.items() if not same(value, reference[name].get(key))]
                verdict = "same" if not changed else "DIFFERS: " + ", ".join(changed)
                differ += bool(changed)
        print(f"{name:70s} {cpu:7.1f} CPU s  {verdict}", flush=True)
    print(f"{'total':70s} {total:7.1f} CPU s")
    if args.save:
        args.save.write_text(json.dumps(plans, indent=1))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
