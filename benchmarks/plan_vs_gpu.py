"""`ouro plan`'s peak memory against ``torch.cuda.max_memory_allocated`` of the same step on one GPU.

    python benchmarks/plan_vs_gpu.py                  # ouro-1.4b, 2 x 4096 tokens, bf16-mixed, checkpointing
    python benchmarks/plan_vs_gpu.py --dry-run        # CPU: the plan, and the same step measured on CPU

The step is the one a plan runs (`ouro.plan.step`): OuroLM's Stage I loss, backward, gradient clipping and
AdamW under bf16 autocast over fp32 weights, one GPU, no wrapper. The plan is made first on fake tensors (CPU);
then two real steps run on the GPU and the peak of the second (steady state: the optimizer state exists) is
read with ``torch.cuda.max_memory_allocated``. Prints both and their ratio; ``scripts/gpu_check.sh`` runs it.
The GPU's step runs flash-attn when installed, else SDPA (its flash kernel): both hold O(sequence) memory.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ouro.config import OuroConfig  # noqa: E402
from ouro.module import OuroLM  # noqa: E402
from ouro.plan.spec import PlanSpec  # noqa: E402
from ouro.plan.step import count_step, fake_world  # noqa: E402
from ouro.plan.wrapping import wrap  # noqa: E402


def gpu_peak(spec: PlanSpec, device: torch.device) -> int:
    """Peak bytes allocated on ``device`` during the second of two real steps of ``spec``."""
    with torch.device(device):
        module = OuroLM(**spec.module)
    step = wrap(module, spec.strategy, spec.precision, device)
    optimizer = module.configure_optimizers()
    vocab = module.config.vocab_size
    for index in range(2):
        tokens = torch.randint(0, vocab, (spec.micro_batch, spec.seq_len + 1), device=device)
        batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        if index == 1:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with step.forward_context():
            loss = step.loss(batch)
        loss.backward()
        del loss
        step.clip_gradients(spec.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="ouro-1.4b")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="tiny preset; measure on CPU instead of a GPU")
    args = parser.parse_args()
    preset = "tiny" if args.dry_run else args.preset
    config = asdict(OuroConfig.preset(preset))
    config.pop("extra", None)
    spec = PlanSpec(
        module=dict(model=config, activation_checkpointing=True),
        strategy=None,
        precision="bf16-mixed",
        world_size=1,
        micro_batch=args.batch,
        seq_len=64 if args.dry_run else args.seq,
        gradient_clip_val=1.0,
    )
    with fake_world(1):
        planned = count_step(spec, fake=True).peak_bytes
    if args.dry_run:
        measured, where = count_step(spec).peak_bytes, "CPU (live storages)"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("plan_vs_gpu.py: no CUDA GPU (use --dry-run on CPU)")
        measured, where = gpu_peak(spec, torch.device("cuda")), torch.cuda.get_device_name()
    print(f"{preset}, {spec.micro_batch} x {spec.seq_len} tokens, bf16-mixed, activation checkpointing")
    print(f"  planned peak   {planned / 2**30:.3f} GiB")
    print(f"  measured peak  {measured / 2**30:.3f} GiB on {where}")
    print(f"  plan / measured = {planned / measured:.3f}")


if __name__ == "__main__":
    main()
