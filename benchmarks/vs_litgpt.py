"""Training-step speed of ``ouro`` against an equal-FLOPs non-looped litgpt GPT, in one process.

``ouro`` runs L layers T times with shared weights and computes the LM head after every pass (the objective
reads every pass). The baseline is litgpt's own ``GPT`` with L x T layers at the same width, vocabulary,
sequence length, batch, dtype and optimiser (AdamW), trained on the same batches through litgpt's API
(``GPT.forward`` + ``litgpt.utils.chunked_cross_entropy``). Both are reported in tokens/s and in achieved
FLOP/s from one formula (`ouro.model.flops_per_token`, which counts every pass; the baseline is the same formula
for L x T layers and one pass), as a fraction of the matmul rate measured in the same process, with a
``torch.utils.flop_counter`` cross-check of each step's FLOPs.

    python benchmarks/vs_litgpt.py                        # `bench` preset on CPU, fp32
    python benchmarks/vs_litgpt.py --device cuda --dtype bfloat16 --preset small --seq 1024 --batch 16

litgpt 0.5.13 pins huggingface-hub<1.4 and jsonargparse<=4.41, which conflict with ouro's, so it is installed
with ``--no-deps`` (plus psutil) into ``build/litgpt`` on first use and put on ``sys.path``; only its model,
config and loss are used.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _measure import autocast, count_flops, machine, matmul_rate, median, time_calls  # noqa: E402

from ouro.config import OuroConfig  # noqa: E402
from ouro.model import flops_per_token  # noqa: E402

LITGPT_VERSION = "0.5.13"
LITGPT_DIR = HERE.parent / "build" / "litgpt"


def import_litgpt(install: bool):
    """Import litgpt from ``build/litgpt``, installing it there (no dependencies) if needed."""
    sys.path.insert(0, str(LITGPT_DIR))
    try:
        import litgpt  # noqa: F401
    except ImportError:
        if not install:
            raise SystemExit(
                f"litgpt is not importable; run without --no-install, or: {_install_command()}"
            ) from None
        print(f"installing litgpt=={LITGPT_VERSION} into {LITGPT_DIR} (no dependencies)", flush=True)
        subprocess.run(_install_command(), check=True)
        importlib.invalidate_caches()  # build/litgpt did not exist when the first import looked
        import litgpt  # noqa: F401
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    return Config, GPT, chunked_cross_entropy


def _install_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(LITGPT_DIR),
        f"litgpt=={LITGPT_VERSION}",
        "psutil",
    ]


def litgpt_config(Config, config: OuroConfig, seq_len: int):  # noqa: N803 (the class)
    """litgpt's Llama-style config with the same width and L x T layers."""
    return Config(
        name="ouro-equal-flops",
        block_size=seq_len,
        vocab_size=config.vocab_size,
        padded_vocab_size=config.vocab_size,
        n_layer=config.num_hidden_layers * config.total_ut_steps,
        n_head=config.num_attention_heads,
        n_query_groups=config.num_key_value_heads,
        n_embd=config.hidden_size,
        head_size=config.head_dim,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=config.rms_norm_eps,
        mlp_class_name="LLaMAMLP",
        intermediate_size=config.intermediate_size,
        rope_base=int(config.rope_theta),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="bench", help="OuroConfig preset (bench: 256 wide, 4 layers x 4 passes)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating ouro/litgpt rounds (median is kept)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="compute dtype (bfloat16 = autocast over fp32 weights, like bf16-mixed)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile ouro's layers and litgpt's blocks"
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing per layer call in ouro (litgpt: none; changes the FLOPs)",
    )
    parser.add_argument("--profile", action="store_true", help="print the top operators of one ouro step")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing litgpt")
    args = parser.parse_args()

    Config, GPT, litgpt_loss = import_litgpt(not args.no_install)
    from ouro.module import OuroLM

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = OuroConfig.preset(args.preset)
    ouro = OuroLM(model=config, activation_checkpointing=args.checkpointing, compile=args.compile).to(device)
    ouro.configure_model()
    ouro_opt = ouro.configure_optimizers()
    gpt = GPT(litgpt_config(Config, config, args.seq)).to(device)
    gpt_opt = torch.optim.AdamW(
        gpt.parameters(),
        lr=ouro.optim.lr,
        betas=ouro.optim.betas,
        weight_decay=ouro.optim.weight_decay,
        fused=device.type == "cuda" or None,
    )
    if args.compile:
        for block in gpt.transformer.h:
            block.compile()

    generator = torch.Generator().manual_seed(1)
    count = args.warmup + args.steps * args.rounds + 1
    batches = [
        torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=generator).to(device)
        for _ in range(count)
    ]

    def ouro_step(tokens: torch.Tensor) -> None:
        with autocast(device, dtype):
            loss = ouro.compute_loss({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]})[0].loss
        loss.backward()
        ouro_opt.step()
        ouro_opt.zero_grad(set_to_none=True)

    def gpt_step(tokens: torch.Tensor) -> None:
        with autocast(device, dtype):
            loss = litgpt_loss(gpt(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        gpt_opt.step()
        gpt_opt.zero_grad(set_to_none=True)

    results = {}
    for name, step in (("ouro", ouro_step), ("litgpt", gpt_step)):
        position = iter(batches)
        time_calls(lambda s=step, p=position: s(next(p)), device, warmup=args.warmup, iters=0)
        results[name] = dict(step=step, times=[], flops_counted=count_flops(lambda s=step: s(batches[-1])))
    positions = {name: iter(batches[args.warmup :]) for name in results}
    roofline = 0.0
    for _ in range(args.rounds):  # alternate so that load changes on a shared machine hit all three alike
        for name, result in results.items():
            result["times"] += time_calls(
                lambda s=result["step"], p=positions[name]: s(next(p)), device, warmup=0, iters=args.steps
            )
        roofline = max(roofline, *(matmul_rate(device, dtype, size) for size in (1024, 2048)))

    tokens = args.batch * args.seq
    formula = {
        "ouro": flops_per_token(config, args.seq) * tokens,
        "litgpt": flops_per_token(
            config.replace(
                num_hidden_layers=config.num_hidden_layers * config.total_ut_steps, total_ut_steps=1
            ),
            args.seq,
        )
        * tokens,
    }
    print(machine())
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"config {args.preset}: hidden {config.hidden_size}, {config.num_hidden_layers} layers x "
        f"{config.total_ut_steps} passes, vocab {config.vocab_size}; litgpt {GPT.__module__}.GPT "
        f"{config.num_hidden_layers * config.total_ut_steps} layers; batch {args.batch} x seq {args.seq}, "
        f"{args.dtype}, compile={args.compile}, checkpointing={args.checkpointing}"
    )
    print(f"matmul roofline (best of the rounds, same process): {roofline / 1e9:.1f} GFLOP/s")
    print("times: best step (least disturbed by other load) and median; rates and fractions from the best")
    print(
        f"{'model':<8}{'best s':>8}{'median s':>10}{'tokens/s':>10}{'GFLOP/step':>12}{'counted':>9}"
        f"{'GFLOP/s':>9}{'roofline':>10}"
    )
    per_flop = {}
    for name, result in results.items():
        best = min(result["times"])
        rate = formula[name] / best
        per_flop[name] = rate
        print(
            f"{name:<8}{best:>8.3f}{median(result['times']):>10.3f}{tokens / best:>10.0f}"
            f"{formula[name] / 1e9:>12.2f}{result['flops_counted'] / formula[name]:>8.2f}x{rate / 1e9:>9.1f}"
            f"{rate / roofline:>10.1%}"
        )
    print(
        f"ouro / litgpt achieved FLOP/s: {per_flop['ouro'] / per_flop['litgpt']:.2f} "
        "(>= 1: ouro at least as fast per FLOP)"
    )
    print(
        "'counted' = torch FlopCounter FLOPs of one step / formula FLOPs (> 1: the counter sees the full "
        "attention square, the formula half of it; checkpointing adds a forward)"
    )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            ouro_step(batches[0])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
