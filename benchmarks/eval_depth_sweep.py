"""Requests/s of an ``ouro eval`` depth sweep (every depth in one model load and one forward per request)
against separate single-depth runs.

A local multiple-choice lm-eval task (``--docs`` documents x 4 choices, synthetic text) is evaluated through
`ouro.eval.runner.evaluate` at steps 1..T:

* ``sweep``: one call with every depth: one forward to pass T scores all T settings.
* ``separate``: T calls with one depth each; the run at step k runs k passes (this backend stops there), so
  the passes alone give the sweep at most (T + 1) / 2 over it.
* ``separate, full-depth forward``: T runs that each cost a step-T run (T x its time): what rerunning a model
  whose forward always computes every pass (as the official remote code does) per depth costs; the passes
  alone give the sweep at most T over it.

A request here is one (request, depth) score; every configuration scores the same number. The task index
(lm-eval's TaskManager) is built before timing; model loading is not timed (the separate runs would pay it T
times). Each configuration runs ``--repeats`` times; medians are reported.

    .venv/bin/python benchmarks/eval_depth_sweep.py                  # small preset, T = 4, CPU
    .venv/bin/python benchmarks/eval_depth_sweep.py --preset bench --docs 64 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ouro.config import OuroConfig  # noqa: E402
from ouro.data.tokenizer import load_tokenizer  # noqa: E402
from ouro.eval.runner import evaluate, task_manager  # noqa: E402
from ouro.model import OuroForCausalLM  # noqa: E402

WORDS = (
    "the a loop pass layer token model weight gate exit step depth shared stack norm head value key query "
    "river stone cloud seven green quick slow bright under over before after number letter"
).split()

TASK = """task: sweep_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def write_task(folder: Path, docs: int, context_words: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for _ in range(docs):
        question = " ".join(rng.choice(WORDS) for _ in range(context_words))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(4)]
        rows.append(json.dumps({"question": question, "choices": choices, "answer": rng.randrange(4)}))
    (folder / "docs.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "sweep_choice.yaml").write_text(TASK.format(data=folder / "docs.jsonl"))


def timed(model, tokenizer, folder: Path, depths: str, batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = evaluate(
        model,
        tokenizer,
        "sweep_choice",
        depths=depths,
        batch_size=batch_size,
        include_path=str(folder),
        progress=False,
    )
    seconds = time.perf_counter() - start
    scored = sum(r.requests for r in results.tasks["sweep_choice"].values())
    return seconds, scored


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="small", help="model preset (vocab must fit the built-in tokenizer)"
    )
    parser.add_argument("--steps", type=int, default=4, help="trained steps T; the sweep is 1..T")
    parser.add_argument("--docs", type=int, default=32, help="documents of the task (4 choices each)")
    parser.add_argument("--context_words", type=int, default=32, help="words per question")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import logging

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tokenizer = load_tokenizer("builtin")
    torch.manual_seed(0)
    config = OuroConfig.preset(args.preset, vocab_size=tokenizer.get_vocab_size(), total_ut_steps=args.steps)
    model = OuroForCausalLM(config).to(args.device).eval()
    T = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_task(folder, args.docs, args.context_words, seed=0)
        task_manager([str(folder)])  # index lm-eval's tasks once, untimed
        timed(model, tokenizer, folder, "1", args.batch_size)  # warm-up: dataset cache, kernels
        sweep, separate, deepest = [], [], []
        for _ in range(args.repeats):
            seconds, scored = timed(model, tokenizer, folder, f"1-{T}", args.batch_size)
            sweep.append(scored / seconds)
            runs = [timed(model, tokenizer, folder, str(k), args.batch_size) for k in range(1, T + 1)]
            separate.append(sum(n for _, n in runs) / sum(s for s, _ in runs))
            deepest.append(runs[-1][1] / runs[-1][0])  # each of the T runs costs one step-T run
    rates = {
        "sweep": statistics.median(sweep),
        "separate": statistics.median(separate),
        "separate_full_depth": statistics.median(deepest),
    }
    print(
        f"preset {args.preset}, T = {T}, {args.docs} docs x 4 choices, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.device}"
    )
    print(f"{'configuration':<40}{'requests/s':>12}{'sweep speed-up':>16}")
    labels = {
        "sweep": f"sweep 1..{T}, one load",
        "separate": f"{T} separate single-depth runs",
        "separate_full_depth": f"{T} separate runs, full-depth forward",
    }
    for key, rate in rates.items():
        print(f"{labels[key]:<40}{rate:>12.1f}{rates['sweep'] / rate:>15.2f}x")
    print(f"aim: >= 0.8 x T = {0.8 * T:.1f}x; the passes alone allow {(T + 1) / 2:.1f}x and {T:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "requests_per_second": rates}, indent=2))


if __name__ == "__main__":
    main()
