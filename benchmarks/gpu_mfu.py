"""MFU of an ``ouro-1.4b`` training step on one GPU: 4K tokens, flash attention, bf16, activation checkpointing.

    python benchmarks/gpu_mfu.py                   # ouro-1.4b, 4 x 4096 tokens, compiled layers, ~2-4 minutes
    python benchmarks/gpu_mfu.py --no-compile --batch 2
    python benchmarks/gpu_mfu.py --dry-run         # CPU smoke run of the same code on the `tiny` preset

MFU = model FLOPs (`ouro.model.flops_per_token`: every pass, LM head per pass, x3 for training, recomputation
not counted) per second / 989 TFLOP/s (H100/H200 dense bf16). The step is OuroLM's own loss (Stage I objective,
one-pass chunked cross-entropy) + backward + fused AdamW, under bf16 autocast over fp32 weights (as ``bf16-mixed``).
The script fails unless a flash-attention kernel runs in the step (kernel names from ``torch.profiler``):
flash-attn's when installed, otherwise PyTorch SDPA restricted to its FLASH_ATTENTION backend.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _measure import H100_BF16_PEAK, machine, matmul_rate, median, time_calls  # noqa: E402

from ouro.config import OuroConfig  # noqa: E402
from ouro.model import flops_per_token  # noqa: E402
from ouro.model.attention import flash_attn_available  # noqa: E402


def flash_kernels(step, device: torch.device) -> list[str]:
    """Names of the GPU kernels with 'flash' in their name launched by one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    names = {event.key for event in prof.key_averages()}
    return sorted(name for name in names if "flash" in name.lower())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="ouro-1.4b")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true", help="eager layers instead of torch.compile")
    parser.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="keep all T x layers activations (ouro-1.4b at 4K: tens of GB per sequence; use --batch 1)",
    )
    parser.add_argument("--peak", type=float, default=H100_BF16_PEAK, help="peak FLOP/s for MFU")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, `tiny` preset, fp32: checks the script only"
    )
    args = parser.parse_args()

    from ouro.module import OuroLM

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        args.preset, args.seq, args.batch, args.steps, args.warmup = "tiny", 128, 2, 2, 1
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_mfu.py needs a CUDA GPU (use --dry-run to check the script on CPU)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True

    config = OuroConfig.preset(args.preset)
    torch.manual_seed(0)
    with torch.device(device):
        module = OuroLM(
            model=config,
            activation_checkpointing=not args.no_checkpointing,
            compile=not args.no_compile and not args.dry_run,
        )
    module.configure_model()
    module.train()
    optimizer = module.configure_optimizers()
    generator = torch.Generator(device=device).manual_seed(1)
    tokens = torch.randint(
        0, config.vocab_size, (args.batch, args.seq + 1), generator=generator, device=device
    )
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}

    def attention():
        """Without flash-attn, SDPA must use its flash backend (its CPU one in --dry-run): fail rather than fall
        back to another kernel."""
        if not flash_attn_available():
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # a fresh context each time: it is single-use
        return nullcontext()

    def step() -> None:
        with attention():  # backward too: activation checkpointing recomputes attention there
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = module.compute_loss(batch)[0].loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = time_calls(step, device, warmup=args.warmup, iters=args.steps)
    seconds = median(times)
    tokens_per_step = args.batch * args.seq
    flops = flops_per_token(config, args.seq) * tokens_per_step
    print(machine())
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"{args.preset}: {config.num_hidden_layers} layers x {config.total_ut_steps} passes, batch {args.batch} "
        f"x {args.seq} tokens, {dtype}, checkpointing={not args.no_checkpointing}, "
        f"compile={not args.no_compile and not args.dry_run}, flash-attn installed={flash_attn_available()}"
    )
    print(
        f"step {seconds:.3f} s (min {min(times):.3f}), {tokens_per_step / seconds:,.0f} tokens/s, "
        f"{flops / seconds / 1e12:.1f} TFLOP/s model FLOPs"
    )
    if device.type == "cuda":
        roofline = matmul_rate(device, dtype, 8192)
        print(
            f"MFU {flops / seconds / args.peak:.1%} of {args.peak / 1e12:.0f} TFLOP/s; "
            f"{flops / seconds / roofline:.1%} of the measured bf16 matmul rate ({roofline / 1e12:.0f} TFLOP/s); "
            f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        )
        kernels = flash_kernels(step, device)
        assert kernels, "no flash-attention kernel ran in the training step"
        print(f"flash kernels: {', '.join(k[:60] for k in kernels[:4])}")


if __name__ == "__main__":
    main()
