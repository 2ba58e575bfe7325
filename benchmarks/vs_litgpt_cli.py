"""``ouro fit`` against ``litgpt pretrain``: both command lines, at their defaults, on the same text and tokenizer.

The text is the built-in corpus (the Python standard library's documentation) written as ``.txt`` files; both
tools tokenize it with the built-in 4096-token tokenizer (``ouro prepare``, litgpt's ``TextFiles``). ouro trains
``L`` layers x ``T`` passes, litgpt a GPT with ``L x T`` layers of the same width (the equal-FLOPs baseline of
``benchmarks/vs_litgpt.py``), same batch, sequence length, steps, precision and CPU threads. Each tool runs in
its own process; a round runs ouro then litgpt, and rounds alternate so that a change of load on a shared
machine hits both.

Figures are steady state: litgpt's per-iteration times (``iter time`` lines, data loading excluded) and ouro's
``throughput/tokens_per_sec`` windows (the `ouro.callbacks.Throughput` callback, 5 steps per window, data loading
included), both without the first ``--skip`` steps, where compilation happens. FLOPs per token come from one
formula for both (`ouro.model.flops_per_token`: every pass of ouro, litgpt as one pass of ``L x T`` layers).

    python benchmarks/vs_litgpt_cli.py                               # fp32, ouro at its default (no compile)
    python benchmarks/vs_litgpt_cli.py --precision bf16-mixed --ouro-compile

litgpt always compiles (``torch.compile(model)`` in ``litgpt pretrain``). It is installed into ``build/litgpt``
without dependencies, as in ``benchmarks/vs_litgpt.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from vs_litgpt import LITGPT_DIR, import_litgpt, litgpt_config  # noqa: E402

from ouro.config import OuroConfig  # noqa: E402
from ouro.model import flops_per_token  # noqa: E402

WORK = ROOT / "build" / "vs_litgpt_cli"
ITER_TIME = re.compile(r"iter (\d+) step \d+ .*? iter time: ([0-9.]+) ms")


def write_text(directory: Path, files: int) -> None:
    """The built-in corpus as ``files`` plain-text files (litgpt's TextFiles keeps the first for validation)."""
    from ouro.data.builtin import corpus_documents

    directory.mkdir(parents=True, exist_ok=True)
    docs = [text for _, text in corpus_documents()]
    for i in range(files):
        (directory / f"part-{i:02d}.txt").write_text("\n\n".join(docs[i::files]))


def tokenizer_dir(directory: Path) -> Path:
    """A folder litgpt's Tokenizer reads: the built-in tokenizer.json and its end-of-document token."""
    from ouro.data.builtin import builtin_tokenizer_path

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(builtin_tokenizer_path().read_text())
    # litgpt's TextFiles starts every file with a BOS token: the end-of-document token serves (ouro ends each
    # document with it), so both token streams differ by one token per file.
    eot = "<|endoftext|>"
    special = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot}
    (directory / "tokenizer_config.json").write_text(json.dumps(special) + "\n")
    return directory


def run(command: list[str], env: dict[str, str], log: Path) -> str:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        sys.exit(f"{' '.join(command[:5])} ... failed (exit {done.returncode}); see {log}")
    return done.stdout + done.stderr


def ouro_round(args, config: OuroConfig, shards: Path, env: dict[str, str], index: int) -> float:
    """tokens/s of ``ouro fit`` after the first ``--skip`` steps."""
    run_dir = WORK / f"ouro-run-{index}"
    recipe = {
        "seed_everything": 0,
        "cpu_threads": args.threads,
        "trainer": {
            "default_root_dir": str(run_dir),
            "accelerator": "cpu",
            "precision": args.precision,
            "max_steps": args.steps,
            "limit_val_batches": 0,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 5,
            "callbacks": [{"class_path": "ouro.callbacks.Throughput", "init_args": {"log_every_n_steps": 5}}],
        },
        "model": {
            "model": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size")}
            | {
                k: getattr(config, k)
                for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads")
            }
            | {"total_ut_steps": config.total_ut_steps, "rope_theta": config.rope_theta, "eos_token_id": 0},
            "optimizer": {"lr": 3.0e-4},
        },
        "data": {
            "class_path": "ouro.data.PretrainDataModule",
            "init_args": {
                "sources": [str(shards)],
                "val_source": None,
                "seq_len": args.seq,
                "batch_size": args.batch,
                "num_workers": 1,
            },
        },
    }
    if args.ouro_compile:
        recipe["model"]["compile"] = True
    path = WORK / "ouro.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run([sys.executable, "-m", "ouro.cli", "fit", "--config", str(path)], env, WORK / f"ouro-{index}.log")
    (metrics,) = run_dir.glob("logs/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("throughput/tokens_per_sec")]
    steady = [float(r["throughput/tokens_per_sec"]) for r in rows if int(r["step"]) > args.skip]
    if not steady:
        sys.exit(f"ouro logged no throughput after step {args.skip}: raise --steps")
    return sorted(steady)[len(steady) // 2]


def litgpt_round(
    args, config: OuroConfig, text: Path, tokenizer: Path, env: dict[str, str], index: int
) -> float:
    """tokens/s of ``litgpt pretrain`` (median iteration after the first ``--skip``)."""
    Config, _, _ = import_litgpt(install=True)  # noqa: N806 (the class)
    gpt = litgpt_config(Config, config, args.seq)
    model_config = {k: getattr(gpt, k) for k in ("name", "block_size", "vocab_size", "padded_vocab_size")}
    model_config |= {
        k: getattr(gpt, k) for k in ("n_layer", "n_head", "n_query_groups", "n_embd", "head_size")
    }
    model_config |= {k: getattr(gpt, k) for k in ("rotary_percentage", "parallel_residual", "bias")}
    model_config |= {k: getattr(gpt, k) for k in ("norm_class_name", "norm_eps", "mlp_class_name")}
    model_config |= {"intermediate_size": gpt.intermediate_size, "rope_base": gpt.rope_base}
    tokens_per_step = args.batch * args.seq
    settings = {
        "model_name": "ouro-equal-flops",
        "model_config": model_config,
        "out_dir": str(WORK / f"litgpt-run-{index}"),
        "precision": args.precision,
        "data": {"class_path": "litgpt.data.TextFiles", "init_args": {"train_data_path": str(text)}},
        "tokenizer_dir": str(tokenizer),
        "train": {
            "micro_batch_size": args.batch,
            "global_batch_size": args.batch,
            "max_tokens": tokens_per_step * args.steps,
            "max_seq_length": args.seq,
            "log_interval": 1,
            "save_interval": None,
            "lr_warmup_steps": 0,
        },
        "eval": {"interval": 10**9, "initial_validation": False, "final_validation": False, "max_iters": 1},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3.0e-4}},
        "logger_name": "csv",
        "devices": 1,
    }
    if not (
        text / "train" / "index.json"
    ).is_file():  # TextFiles reuses any train/ folder, even a partial one
        subprocess.run(["rm", "-rf", str(text / "train"), str(text / "val")], check=True)
    path = WORK / "litgpt.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    subprocess.run(["rm", "-rf", settings["out_dir"]], check=True)
    litgpt_env = {**env, "PYTHONPATH": os.pathsep.join([str(LITGPT_DIR), env.get("PYTHONPATH", "")])}
    out = run(
        [sys.executable, "-m", "litgpt", "pretrain", "--config", str(path)],
        litgpt_env,
        WORK / f"litgpt-{index}.log",
    )
    times = [float(ms) / 1000 for it, ms in ITER_TIME.findall(out) if int(it) > args.skip]
    if not times:
        sys.exit(
            f"litgpt printed no iteration after {args.skip}: raise --steps (log: {WORK}/litgpt-{index}.log)"
        )
    return tokens_per_step / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4, help="ouro layers (litgpt gets layers x passes)")
    parser.add_argument("--passes", type=int, default=4, help="ouro's total_ut_steps")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688, help="MLP width (the bench preset's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out (compilation, warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="ouro/litgpt rounds (the median is kept)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of both tools")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument(
        "--ouro-compile", action="store_true", help="add model.compile: true to ouro's recipe"
    )
    args = parser.parse_args()

    from ouro.data.builtin import BUILTIN_VOCAB_SIZE

    config = OuroConfig.preset(
        "bench",
        vocab_size=BUILTIN_VOCAB_SIZE,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        total_ut_steps=args.passes,
    )
    WORK.mkdir(parents=True, exist_ok=True)
    text = WORK / "text"
    if not text.is_dir():
        write_text(text, files=8)
    tokenizer = tokenizer_dir(WORK / "tokenizer")
    shards = WORK / "ouro-shards"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    if not (shards / "manifest.json").is_file():
        run(
            [
                sys.executable,
                "-m",
                "ouro.cli",
                "prepare",
                str(text),
                str(shards),
                "--tokenizer",
                str(tokenizer),
            ],
            env,
            WORK / "prepare.log",
        )
    load_before = os.getloadavg()
    results: dict[str, list[float]] = {"ouro": [], "litgpt": []}
    for index in range(args.rounds):
        results["ouro"].append(ouro_round(args, config, shards, env, index))
        results["litgpt"].append(litgpt_round(args, config, text, tokenizer, env, index))
    load_after = os.getloadavg()

    deep = config.replace(
        num_hidden_layers=config.num_hidden_layers * config.total_ut_steps, total_ut_steps=1
    )
    flops = {"ouro": flops_per_token(config, args.seq), "litgpt": flops_per_token(deep, args.seq)}
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"ouro {config.num_hidden_layers} layers x {config.total_ut_steps} passes vs litgpt {deep.num_hidden_layers}"
        f" layers; hidden {config.hidden_size}, vocab {config.vocab_size}, batch {args.batch} x seq {args.seq}, "
        f"{args.steps} steps (first {args.skip} left out), {args.precision}, {args.threads} thread(s), "
        f"ouro compile={'true' if args.ouro_compile else 'default (false)'}, litgpt compile=always"
    )
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after} on {os.cpu_count()} CPUs")
    print(f"{'tool':<8}{'tokens/s':>10}{'GFLOP/token':>13}{'GFLOP/s':>9}   rounds (tokens/s)")
    rate = {}
    for name, values in results.items():
        tokens_per_s = sorted(values)[len(values) // 2]
        rate[name] = tokens_per_s * flops[name]
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<8}{tokens_per_s:>10.0f}{flops[name] / 1e9:>13.4f}{rate[name] / 1e9:>9.2f}   {rounds}")
    print(
        f"ouro / litgpt per FLOP: {rate['ouro'] / rate['litgpt']:.2f} (> 1: ouro does more work per second)"
    )


if __name__ == "__main__":
    main()
