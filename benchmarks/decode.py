"""Decode throughput and KV-cache size with early exit and KV sharing.

For KV sharing ``full`` and ``last`` and Q-exit thresholds q in {1.0, 0.9, 0.7} (configurable), generates
``--new_tokens`` tokens after a ``--prompt_len`` prompt and reports decode tokens/s (after the prompt pass), the
average number of passes per decoded token (the work really done), the speedup over q = 1.0 with the same
sharing, and the cache bytes.

The default model is the ``bench`` preset with random weights; its exit gate then gives λ ≈ 0.5 per pass
(p ≈ 0.5, 0.25, 0.125, 0.125), so q = 0.9 still runs 4 passes and q = 0.7 runs 2. ``--gate_bias`` shifts the gate
(positive = earlier exits); ``--model`` measures a trained model (exported folder, run, checkpoint or repo id).

    .venv/bin/python benchmarks/decode.py                       # CPU, bench preset
    .venv/bin/python benchmarks/decode.py --device cuda --preset small --batch_size 8
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ouro.config import OuroConfig
from ouro.generation import generate
from ouro.model import OuroForCausalLM


def build_model(args: argparse.Namespace) -> OuroForCausalLM:
    if args.model:
        from ouro.checkpoints import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
        return model
    torch.manual_seed(args.seed)
    model = OuroForCausalLM(OuroConfig.preset(args.preset, eos_token_id=None))
    torch.nn.init.constant_(model.model.early_exit_gate.bias, args.gate_bias)
    return model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def run_once(
    model: OuroForCausalLM, prompts: list[list[int]], args: argparse.Namespace, sharing: str, q: float
):
    result = generate(
        model, prompts, max_new_tokens=args.new_tokens, exit_threshold=q, kv_sharing=sharing, eos_token_id=[]
    )
    return (
        result.decode_tokens_per_second,
        result.decode_passes / max(result.decode_tokens, 1),
        result.cache_bytes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="bench", help="model size when --model is not given")
    parser.add_argument("--model", default=None, help="exported folder, run dir, .ckpt or Hub repo id")
    parser.add_argument(
        "--gate_bias", type=float, default=0.0, help="bias of the random exit gate (preset only)"
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per setting; the median rate is reported"
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.9, 0.7])
    parser.add_argument("--sharing", nargs="+", default=["full", "last"], choices=["full", "last", "mean"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    config = model.config
    generator = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(
        3, config.vocab_size, (args.batch_size, args.prompt_len), generator=generator
    ).tolist()
    generate(model, prompts, max_new_tokens=4)  # warm-up

    print(
        f"model: {args.model or args.preset} ({config.num_hidden_layers} layers x {config.total_ut_steps} passes, "
        f"hidden {config.hidden_size}), device {args.device}, {args.dtype}, batch {args.batch_size}, "
        f"prompt {args.prompt_len}, new tokens {args.new_tokens}, threads {torch.get_num_threads()}"
    )
    print(f"{'sharing':>8} {'q':>5} {'avg depth':>9} {'decode tok/s':>13} {'speedup':>8} {'cache MiB':>10}")
    settings = [(sharing, q) for sharing in args.sharing for q in args.thresholds]
    runs: dict[tuple[str, float], list[tuple[float, float, int]]] = {s: [] for s in settings}
    for _ in range(args.repeats):  # round-robin, so load from other processes hits every setting alike
        for sharing, q in settings:
            runs[(sharing, q)].append(run_once(model, prompts, args, sharing, q))
    rows = []
    for sharing, q in settings:
        rate = statistics.median(r[0] for r in runs[(sharing, q)])
        depth = statistics.mean(r[1] for r in runs[(sharing, q)])
        cache = runs[(sharing, q)][0][2]
        baseline = statistics.median(r[0] for r in runs[(sharing, 1.0)]) if (sharing, 1.0) in runs else None
        speedup = rate / baseline if baseline else float("nan")
        rows.append((sharing, q, depth, speedup))
        print(f"{sharing:>8} {q:>5.2f} {depth:>9.2f} {rate:>13.1f} {speedup:>7.2f}x {cache / 2**20:>10.2f}")
    shallow = [r for r in rows if r[2] <= 2.5 and r[1] < 1.0]
    for sharing, q, depth, speedup in shallow:
        verdict = "meets" if speedup >= 1.4 else "misses"
        print(
            f"aim (>= 1.4x at avg depth <= 2.5): {sharing} q={q}: depth {depth:.2f}, {speedup:.2f}x -> {verdict}"
        )


if __name__ == "__main__":
    main()
