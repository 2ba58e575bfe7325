"""`evaluate`: lm-eval tasks on an in-memory Ouro model at several depth settings, with one model and one
scoring forward per request for the whole sweep.

The tasks are loaded once; lm-eval's ``evaluate`` then runs once per depth setting with the same `OuroEvalLM`,
whose active setting changes between runs, and with the few-shot sampler re-seeded before each run, so every
setting scores the same prompts. The first run scores every log-likelihood request at every setting
(one forward up to the deepest pass); the later runs read those scores from the backend's cache, so they cost
lm-eval's bookkeeping and metrics, not forwards. Generation tasks run per setting.

With ``distributed=True`` (`EvalInTraining` under several ranks) lm-eval's own distributed evaluation splits the
documents: each rank scores every world-size-th one, rank 0 computes the metrics from every rank's per-document
results, and the results reach every rank.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ouro.data.cache import cache_dir
from ouro.eval.backend import DepthStats, OuroEvalLM
from ouro.eval.results import DepthResult, EvalResults
from ouro.eval.scoring import depth_settings
from ouro.eval.suite import materialize
from ouro.model import OuroForCausalLM

#: lm-eval output keys that do not depend on the depth setting (copied into results.json once).
LM_EVAL_KEYS = ("group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from ``"a,b"`` or a list."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ValueError("--tasks: name at least one lm-eval task (e.g. --tasks mmlu or --tasks my_task)")
    return names


@functools.lru_cache(maxsize=1)
def suite_include_path() -> str:
    """The folder of the built-in offline tasks (`ouro.eval.suite`), written on first use."""
    return str(materialize(cache_dir() / "eval-suite"))


@functools.lru_cache(maxsize=8)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool = True):
    from lm_eval.tasks import TaskManager  # optional dependency (the `eval` extra); slow to import

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def task_manager(
    include_path: str | Sequence[str] | None = None,
    include_option: str = "--include_path",
    names: Sequence[str] | None = None,
):
    """lm-eval's TaskManager over its own tasks, the built-in suite and ``include_path`` (cached: indexing
    lm-eval's task folder takes seconds). ``include_option``: how the caller's user sets ``include_path``.

    ``names``: the names that will be looked up. When each is a task (not a group or tag) of ``include_path`` or
    the built-in suite, the manager indexes those folders only: lm-eval resolves such a name to the same YAML
    either way (include paths take precedence over its own tasks), and its task folder (about 8 s of CPU) is not
    read."""
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{include_option} {path} is not a folder of lm-eval task YAML files")
    folders = tuple(str(Path(p).resolve()) for p in paths) + (suite_include_path(),)
    if names is not None:
        local = _task_manager(tuple(f for f in folders if f), include_defaults=False)
        if names and all(name in local.all_subtasks for name in names):
            return local
    return _task_manager(folders)


def check_task_names(
    manager, names: Sequence[str], tasks_option: str = "--tasks", include_option: str = "--include_path"
) -> None:
    """One clear error for names that are neither a task, group or tag of ``manager`` nor a YAML file (the
    options named as the caller's user sets them: ``ouro eval``'s flags, or a callback's arguments)."""
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known and not Path(n).is_file()]
    if unknown:
        raise ValueError(
            f"{tasks_option}: unknown lm-eval task {', '.join(map(repr, unknown))}; list the tasks with "
            f"`lm-eval ls tasks`, or add a folder of task YAMLs with {include_option}"
        )


def generation_tasks(manager, names: Sequence[str]) -> list[str]:
    """The tasks among ``names`` (groups expanded) whose requests are generation (``generate_until``)."""
    return _generation(load_tasks(manager, names)["tasks"])


def _generation(tasks: dict[str, Any]) -> list[str]:
    return [name for name, task in tasks.items() if task.OUTPUT_TYPE == "generate_until"]


def load_tasks(manager, names: Sequence[str]) -> dict[str, Any]:
    """lm-eval's ``TaskManager.load`` after `check_task_names`."""
    check_task_names(manager, names)
    return manager.load(list(names))


def evaluate(
    model: OuroForCausalLM,
    tokenizer: Any,
    tasks: str | Sequence[str],
    depths: str | int | Sequence[int] | None = None,
    exit_thresholds: str | float | Sequence[float] | None = (),
    use_gate: bool = False,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: str | Sequence[str] | None = None,
    num_fewshot: int | None = None,
    max_length: int | None = None,
    kv_sharing: str = "full",
    fewshot_seed: int = 1234,
    bootstrap_iters: int = 0,
    progress: bool = True,
    distributed: bool = False,
    forward_wrapper: Callable[[Callable[[], Any]], Any] | None = None,
    scored: dict[str, int] | None = None,
) -> EvalResults:
    """Evaluate ``model`` on lm-eval ``tasks`` at every depth setting.

    Args:
        model: The looped model (its train/eval mode is restored afterwards).
        tokenizer: Its `tokenizers.Tokenizer` (or a transformers tokenizer).
        tasks: lm-eval task or group names (``"a,b"`` or a list); the built-in suite's and ``include_path``'s
            tasks included.
        depths: Static exit steps, 1-based (``"1-8"``, ``"1,2,4"``, a list); may exceed the trained steps.
            None: every trained step 1..T; ``"none"``: no static step.
        exit_thresholds: Q-exit thresholds in (0, 1] (``"0.5,0.7,0.9"`` or a list).
        use_gate: Also evaluate Q-exit at the config's ``early_exit_threshold`` (the gate as trained).
        limit: At most this many documents per task (a fraction below 1).
        batch_size: Sequences per forward.
        include_path: Extra folder(s) of lm-eval task YAMLs.
        num_fewshot: Few-shot examples (default: each task's own).
        max_length: Longest sequence the model reads (default ``max_position_embeddings``).
        kv_sharing: Decode-time KV cache of generation tasks: full, last or mean.
        fewshot_seed: Seed of the few-shot sampler.
        bootstrap_iters: lm-eval's bootstrap iterations for standard errors (0: skip them).
        progress: Show progress bars.
        distributed: Split the documents over the ranks of the initialized ``torch.distributed`` process group
            (every rank calls this with the same arguments); every rank returns rank 0's results. Each task needs
            at least one document per rank; generation tasks are refused.
        forward_wrapper: How each scoring forward runs (`OuroEvalLM`'s ``forward_wrapper``).
        scored: Filled with task name -> documents this rank scored.
    """
    from lm_eval.evaluator import evaluate as lm_eval_evaluate  # optional dependency (the `eval` extra)

    settings = depth_settings(depths, exit_thresholds, use_gate, model.config.total_ut_steps)
    names = parse_tasks(tasks)
    loaded = load_tasks(task_manager(include_path, names=names), names)
    for task in loaded["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)

    was_training = model.training
    lm = OuroEvalLM(
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        batch_size=batch_size,
        max_length=max_length,
        kv_sharing=kv_sharing,
        progress=progress,
        distributed=distributed,
        forward_wrapper=forward_wrapper,
    )
    raw: dict[str, dict[str, Any]] = {}
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    try:
        if lm.world_size > 1:
            check_splittable(loaded["tasks"], limit, lm.world_size)
        for setting in settings:
            lm.active = setting
            # lm-eval's few-shot sampler is stateful and lm-eval's evaluate does not re-seed it: re-seeding here
            # gives every setting the prompts a run of that setting alone gets (and the cache its hits).
            for task in loaded["tasks"].values():
                task.set_fewshot_seed(seed=fewshot_seed)
            raw[setting.key] = lm_eval_evaluate(
                lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False
            )
            quiet.setLevel(logging.WARNING)  # lm-eval's per-run logging once is enough
    finally:
        quiet.setLevel(level)
        model.train(was_training)
    if scored is not None:
        scored.update({name: len(ids) for name, ids in lm.documents.items()})
    if lm.world_size == 1:
        return _collect(raw, settings, lm, names)
    return _collect_on_rank_zero(raw, settings, lm, names)


def check_splittable(tasks: dict[str, Any], limit: int | float | None, world_size: int) -> None:
    """Refuse, identically on every rank, what cannot be split over ``world_size`` ranks: a rank without
    documents would skip the scoring forwards (collectives) the others run; generation exits early per token."""
    generation = _generation(tasks)
    if generation:
        raise ValueError(
            f"lm-eval generation task(s) {', '.join(generation)} cannot be split over {world_size} ranks (real "
            "early exit runs a different number of forwards on each); evaluate them with `ouro eval` in one process"
        )
    for name, task in tasks.items():
        count = len(task.eval_docs)
        if limit is not None:
            count = min(count, int(limit) if limit >= 1 else math.ceil(count * limit))
        if count < world_size:
            raise ValueError(
                f"lm-eval task {name} has {count} document(s) to score, fewer than the {world_size} ranks that "
                "split them; raise the limit or evaluate it in one process"
            )


def _collect_on_rank_zero(raw, settings, lm: OuroEvalLM, names: list[str]) -> EvalResults:
    """`_collect` on rank 0 (the only rank with lm-eval's results), over every rank's stats; the results (or
    rank 0's error) broadcast to every rank."""
    gathered = lm.gather_object((dict(lm.stats), dict(lm.request_types)), dst=0)
    payload: Any = None
    if lm.rank == 0:
        try:
            stats: dict[tuple[str, str], DepthStats] = defaultdict(DepthStats)
            for rank_stats, rank_types in gathered:
                for key, value in rank_stats.items():
                    stats[key].add(value)
                for name, kind in rank_types.items():
                    lm.request_types.setdefault(name, kind)
            lm.stats = stats
            payload = _collect(raw, settings, lm, names)
            try:
                pickle.dumps(payload)
            except Exception:  # noqa: BLE001 (a task config holding a function: the other ranks go without)
                payload.lm_eval = {k: v for k, v in payload.lm_eval.items() if k != "configs"}
                pickle.dumps(payload)
        except Exception as error:  # noqa: BLE001 (re-raised on every rank below, instead of a hang)
            payload = RuntimeError(f"ouro: rank 0 failed to collect the results: {error!r}")
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _collect(raw: dict[str, dict[str, Any]], settings, lm: OuroEvalLM, names: list[str]) -> EvalResults:
    first = raw[settings[0].key]
    subtasks: dict[str, list[str]] = first.get("group_subtasks", {})
    tasks: dict[str, dict[str, DepthResult]] = {}
    reported = list(first["results"])
    for name in reported:
        tasks[name] = {}
        for setting in settings:
            stats = _stats_of(name, setting.key, lm.stats, subtasks)
            tasks[name][setting.key] = DepthResult(
                metrics=dict(raw[setting.key]["results"][name]),
                mean_depth=stats.mean_depth,
                tokens_per_second=stats.tokens_per_second,
                requests=stats.requests,
            )
    generation = None
    if "generate_until" in lm.request_types.values():
        generation = {
            "early_exit": "real: passes after a token's exit are not run (ouro.generation.generate)",
            "kv_sharing": lm.kv_sharing,
            "settings": {s.key: _generation_mode(lm, s) for s in settings},
        }
    config = lm.model.config
    kinds = set(lm.request_types.values())
    scoring = {
        s.key: {
            **(
                {"loglikelihood": _loglikelihood_mode(s, config.total_ut_steps)}
                if kinds - {"generate_until"}
                else {}
            ),
            **({"generation": _generation_mode(lm, s)} if "generate_until" in kinds else {}),
        }
        for s in settings
    }
    return EvalResults(
        settings=list(settings),
        tasks=tasks,
        lm_eval={k: first[k] for k in LM_EVAL_KEYS if k in first},
        model={
            "parameters": lm.model.num_parameters(),
            "total_ut_steps": config.total_ut_steps,
            "early_exit_threshold": config.early_exit_threshold,
            "num_hidden_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
        },
        request_types=dict(lm.request_types),
        generation=generation,
        scoring=scoring,
        requested=list(names),
    )


def _stats_of(name: str, key: str, stats: dict, subtasks: dict[str, list[str]]) -> DepthStats:
    """A task's stats, or the sum over a group's subtasks."""
    if (name, key) in stats:
        return stats[(name, key)]
    total = DepthStats()
    for sub in subtasks.get(name, []):
        part = _stats_of(sub, key, stats, subtasks)
        total.add(part)
    return total


def _loglikelihood_mode(setting, trained_steps: int) -> str:
    """How a log-likelihood token is scored under ``setting`` (results.json ``scoring``)."""
    if setting.kind == "step":
        k = int(setting.value)
        return f"static exit: every token runs passes 1..{k}; pass {k}'s logits score it"
    q = "the config's early_exit_threshold" if setting.kind == "gate" else f"q = {setting.value:g}"
    return (
        f"Q-exit at {q}, logits only: every token runs all {trained_steps} passes (later tokens attend to "
        "them), and its exit pass (the first whose exit CDF reaches q) picks the logits that score it, as in "
        "the official code; no pass is saved"
    )


def _generation_mode(lm: OuroEvalLM, setting) -> str:
    previous, lm.active = lm.active, setting
    try:
        arguments = lm.generation_arguments()
    finally:
        lm.active = previous
    if "exit_step" in arguments:
        passes = arguments["exit_step"] + 1
        return f"static exit: every new token runs {passes} pass{'es' if passes > 1 else ''}"
    return (
        f"Q-exit at q = {arguments['exit_threshold']:g} over {lm.model.config.total_ut_steps} passes, real early "
        "exit: the passes after a token's exit are not run"
    )
