"""``ouro eval MODEL --tasks ...``: lm-eval tasks at every depth of a looped model, in one model load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from ouro.checkpoints import load_model_and_tokenizer
from ouro.eval.scoring import parse_depths, parse_thresholds


def default_output(model: str) -> Path:
    """``eval/<model name>``: the model's last path component (or Hub id), made safe for a folder name."""
    path = Path(model.rstrip("/"))
    name = path.name or "model"
    if path.suffix == ".ckpt":  # runs/<run>/checkpoints/last.ckpt -> <run>-last
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        name = f"{run.name}-{path.stem}" if run.name else path.stem
    return Path("eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def evaluate_model(
    model: str,
    tasks: str | None = None,
    depths: str | None = None,
    exit_thresholds: str | None = None,
    gate: bool = False,
    limit: float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    include_path: str | None = None,
    max_length: int | None = None,
    kv_sharing: Literal["full", "last", "mean"] = "full",
    tokenizer: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "cpu",
    out: str | None = None,
    plots: bool = True,
    progress: bool = True,
) -> None:
    """Evaluate a looped model with lm-evaluation-harness at several depths in one model load.

    One forward up to the deepest setting scores every depth setting of a log-likelihood task; generation
    tasks run once per setting with real early exit and KV sharing. Writes results.json (lm-eval's format
    with a level per depth setting, plus mean depth and tokens/s), results.md and PNG charts to --out.

    Args:
        model: A run directory, a .ckpt written by `ouro fit`, a sharded checkpoint folder, a folder written by
            `ouro export`, or a Hub repo id (e.g. ByteDance/Ouro-1.4B).
        tasks: lm-eval task or group names, comma-separated (e.g. mmlu,arc_challenge); the built-in offline
            suite's tasks and those under --include_path count too.
        depths: Static exit steps, 1-based (the number of passes): 1-8, 1,2,4 or 3. Steps beyond the trained
            total_ut_steps run more passes than trained. Default: every trained step 1..T (free for
            log-likelihood tasks: one forward scores them all); none: no static step.
        exit_thresholds: Q-exit thresholds in (0, 1], comma-separated (e.g. 0.5,0.7,0.9): each token exits at
            the first trained pass whose exit CDF reaches q.
        gate: Also evaluate the exit gate as trained: Q-exit at the config's early_exit_threshold.
        limit: At most this many documents per task (a fraction of each task below 1); for quick checks.
        batch_size: Sequences per forward (prompts per generation batch).
        num_fewshot: Few-shot examples per prompt (default: each task's own setting).
        include_path: Extra folder(s) of lm-eval task YAML files, comma-separated (e.g. tasks over local
            JSONL).
        max_length: Longest sequence the model reads (default: max_position_embeddings); longer inputs keep
            their end.
        kv_sharing: Decode-time KV cache of generation tasks: full (one per pass), last or mean.
        tokenizer: tokenizer.json file, folder or Hub repo id (default: the model's own).
        dtype: Compute dtype of the weights.
        device: Torch device, e.g. cpu or cuda.
        out: Folder for results.json, results.md and the PNGs (default: eval/<model name>).
        plots: Write accuracy_vs_step.png and accuracy_vs_depth.png.
        progress: Show progress bars over requests.
    """
    # lm-eval is an optional dependency (the `eval` extra): `ouro --help` and `ouro eval --help` work without it.
    from ouro.eval.runner import check_task_names, evaluate, parse_tasks, task_manager

    if tasks is None:
        raise ValueError("--tasks: name at least one lm-eval task (e.g. --tasks mmlu or --tasks my_task)")
    # Bad options fail before the model is read (a 1.4B model takes a while to load).
    parse_depths(depths)
    parse_thresholds(exit_thresholds)
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    names = parse_tasks(tasks)
    folders = [p for p in (include_path or "").split(",") if p]
    check_task_names(task_manager(folders), names)

    net, tok = load_model_and_tokenizer(model, tokenizer, dtype, device)
    results = evaluate(
        net,
        tok,
        names,
        depths=depths,
        exit_thresholds=exit_thresholds,
        use_gate=gate,
        limit=limit,
        batch_size=batch_size,
        include_path=folders,
        num_fewshot=num_fewshot,
        max_length=max_length,
        kv_sharing=kv_sharing,
        progress=progress,
    )
    results.model["source"] = model
    written = results.write(Path(out) if out else default_output(model), plots=plots)
    print(results.markdown())
    for path in written.values():
        print(f"wrote {path}")
