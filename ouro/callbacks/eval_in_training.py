"""In-training evaluation: chosen tasks every N tokens, at every exit step and under Q-exit, within a budget."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.schedule import check_token_count, tokens_seen
from ouro.data.base import OuroDataModule
from ouro.data.tokenizer import load_tokenizer
from ouro.eval.suite import FAMILIES, eval_questions, task_name
from ouro.eval.suite.score import count_correct, encode, scores_from_counts

_BUILTIN = re.compile(r"^ouro_([a-z]+)(?:_d(\d+))?$")


class EvalInTraining(L.Callback):
    """Every ``every_tokens`` trained tokens, score ``tasks`` at every exit step 1..T and under each Q-exit
    threshold, and log ``eval/<task>/step<k>``, ``eval/<task>/q<q>`` and ``eval/<task>/q<q>/depth`` (the mean
    number of passes under that threshold). ``ouro plot`` draws them.

    Built-in tasks (``ouro_<family>_d<k>``, or ``ouro_<family>`` for every difficulty) are scored directly, one
    forward per batch for all exit settings; any other name is an lm-eval task run through
    `ouro.eval.runner.evaluate`. Under several ranks both kinds are split: each rank scores every world-size-th
    question (lm-eval: document, with lm-eval's own distributed evaluation) through the strategy's wrapped
    module, so a sharded model (FSDP1, FSDP2) gathers its parameters, and every rank logs the same metrics;
    lm-eval generation tasks are refused there (score them with `ouro eval`). A budget keeps evaluation from
    dominating training: at most ``limit`` questions per task, at most ``max_tokens`` prompt tokens per
    evaluation, and no new task once ``max_seconds`` have passed; whatever the budget cut is said in the log.
    """

    def __init__(
        self,
        tasks: list[str] | str = "ouro_binding",
        every_tokens: int = 1_000_000,
        exit_thresholds: list[float] | None = None,
        limit: int = 100,
        max_tokens: int = 200_000,
        max_seconds: float = 60.0,
        batch_size: int = 32,
        tokenizer: str = "data",
        include_path: str | None = None,
        at_end: bool = True,
    ) -> None:
        """
        Args:
            tasks: Task names: built-in ``ouro_<family>_d<k>`` / ``ouro_<family>`` (families binding, arith,
                lookup, roots), or lm-eval tasks and groups (``arc_easy``, tasks under ``include_path``).
            every_tokens: Evaluate each time this many more tokens are trained.
            exit_thresholds: Q-exit thresholds q in (0, 1] scored besides every static exit step (default 0.5,
                0.9).
            limit: Questions (lm-eval: documents) per task. A built-in family group spreads them over its
                difficulties (``limit // difficulties`` each: 33 of ``ouro_roots`` at the default 100). Built-in
                questions are the first ones of each evaluation (test) set, the questions `ouro eval` reports.
            max_tokens: Prompt tokens per evaluation over all built-in tasks; questions beyond it are cut.
            max_seconds: Wall-clock seconds per evaluation; once over, the remaining tasks are cut.
            batch_size: Questions per forward.
            tokenizer: The model's tokenizer: ``data`` (the one the training data was prepared with), ``builtin``,
                a ``tokenizer.json`` (or its folder) or a Hub id.
            include_path: Folder of extra lm-eval task YAMLs.
            at_end: Also evaluate when training ends (if not just done at that token count).
        """
        self.tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        if not self.tasks or any(not t for t in self.tasks):
            raise ValueError(f"EvalInTraining: tasks must name at least one task, got {tasks!r}")
        self.every_tokens = check_token_count(type(self).__name__, "every_tokens", every_tokens, 1)
        self.exit_thresholds = list(exit_thresholds if exit_thresholds is not None else (0.5, 0.9))
        for q in self.exit_thresholds:
            if not 0.0 < q <= 1.0:
                raise ValueError(f"EvalInTraining: exit_thresholds must lie in (0, 1], got {q}")
        if limit < 1 or batch_size < 1:
            raise ValueError(
                f"EvalInTraining: limit and batch_size must be >= 1, got {limit} and {batch_size}"
            )
        self.limit, self.batch_size = limit, batch_size
        self.max_tokens = check_token_count(type(self).__name__, "max_tokens", max_tokens, 1)
        if max_seconds <= 0:
            raise ValueError(f"EvalInTraining: max_seconds must be > 0, got {max_seconds}")
        self.max_seconds = float(max_seconds)
        self.tokenizer_name, self.include_path, self.at_end = tokenizer, include_path, at_end
        self._builtin = {t: self._builtin_questions(t) for t in self.tasks if _BUILTIN.match(t)}
        self._tokenizer = None
        self.last_tokens = -1  # tokens seen at the last evaluation
        self.history: list[dict[str, Any]] = []  # what each evaluation scored and cut (this session)
        # Questions and lm-eval documents this rank scored (this session; the ranks share them).
        self.scored_here = 0

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def _builtin_questions(self, task: str) -> list[tuple[str, list]]:
        """``(task name, questions)`` per difficulty of a built-in task or family group."""
        name, difficulty = _BUILTIN.match(task).groups()
        if name not in FAMILIES:
            raise ValueError(
                f"EvalInTraining: unknown built-in task {task!r}; families are {sorted(FAMILIES)} "
                "(ouro_<family> or ouro_<family>_d<k>)"
            )
        known = FAMILIES[name].difficulties
        if difficulty and int(difficulty) not in known:
            raise ValueError(
                f"EvalInTraining: {task!r} does not exist; {name} has difficulties {known.start}..{known.stop - 1}"
            )
        difficulties = [int(difficulty)] if difficulty else list(known)
        # A group spreads its limit over its difficulties, easiest first, so a cut drops the hardest.
        per = self.limit if difficulty else max(1, self.limit // len(difficulties))
        return [(task_name(name, d), eval_questions(name, d, per)) for d in difficulties]

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse unknown lm-eval task names before training, naming this callback's arguments."""
        lm_eval_tasks = [t for t in self.tasks if t not in self._builtin]
        if stage == "fit" and lm_eval_tasks:
            # lm-eval is an optional dependency (the `eval` extra); only lm-eval tasks need it.
            from ouro.eval.runner import check_task_names, generation_tasks, task_manager

            include = "EvalInTraining's include_path"
            manager = task_manager(self.include_path, include_option=include, names=lm_eval_tasks)
            check_task_names(manager, lm_eval_tasks, "EvalInTraining's tasks", include)
            if trainer.world_size > 1:
                generation = generation_tasks(manager, lm_eval_tasks)
                if generation:
                    raise ValueError(
                        f"EvalInTraining: lm-eval generation task(s) {', '.join(generation)} cannot be split "
                        f"over {trainer.world_size} ranks (real early exit runs a different number of forwards "
                        "on each); drop them from tasks and score them after training with `ouro eval`"
                    )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seen = tokens_seen(pl_module)
        if seen // self.every_tokens > max(self.last_tokens, 0) // self.every_tokens:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and tokens_seen(pl_module) != self.last_tokens:
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_tokens": self.last_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_tokens = int(state_dict.get("last_tokens", -1))

    # ---------------------------------------------------------------------------------------- evaluation
    def _tokenizer_instance(self, trainer: L.Trainer):
        if self._tokenizer is None:
            name = self.tokenizer_name
            if name == "data":
                data = trainer.datamodule
                name = (data.tokenizer_path if isinstance(data, OuroDataModule) else None) or "builtin"
            self._tokenizer = load_tokenizer(name)
        return self._tokenizer

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Score every task now, log the metrics and return them."""
        model, tokenizer = pl_module.net, self._tokenizer_instance(trainer)
        start, spent_tokens = time.monotonic(), 0
        metrics: dict[str, float] = {}
        cut: list[str] = []
        questions: dict[str, int] = {}  # built-in task or difficulty -> questions scored

        def over_time() -> (
            bool
        ):  # decided on rank 0, so every rank cuts the same tasks; the first part always runs
            late = bool(metrics) and time.monotonic() - start > self.max_seconds
            return trainer.strategy.broadcast(late, src=0)

        for task in self.tasks:
            if over_time():
                cut.append(f"{task} (over {self.max_seconds:g} s)")
                continue
            if task in self._builtin:
                scores, spent_tokens = self._score_builtin(
                    trainer, model, tokenizer, task, spent_tokens, cut, over_time, metrics, questions
                )
            else:
                scores = self._lm_eval(trainer, pl_module, tokenizer, task)
            metrics.update({f"eval/{key}": value for key, value in scores.items()})
        seconds = time.monotonic() - start
        metrics["eval/seconds"] = seconds
        self.last_tokens = tokens_seen(pl_module)
        metrics["train/tokens_seen"] = float(self.last_tokens)  # places the row exactly in `ouro plot`
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.history.append(
            {"tokens": self.last_tokens, "metrics": metrics, "cut": cut, "questions": questions}
        )
        last = f"/step{model.config.total_ut_steps}"
        summary = ", ".join(
            f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("eval/") and k.endswith(last)
        )
        counted = ", ".join(f"{name} {count}" for name, count in questions.items())
        rank_zero_info(
            f"EvalInTraining at {self.last_tokens:,} tokens ({seconds:.1f} s): {summary or 'nothing scored'}"
            + (f"; questions (the first of each test set): {counted}" if counted else "")
            + (f"; cut by the budget: {'; '.join(cut)}" if cut else "")
        )
        return metrics

    def _score_builtin(
        self,
        trainer: L.Trainer,
        model,
        tokenizer,
        task: str,
        spent_tokens: int,
        cut: list[str],
        over_time,
        metrics: dict,
        counts: dict[str, int],
    ) -> tuple[dict[str, float], int]:
        """Scores of a built-in task; a family group also logs each difficulty into ``metrics`` as it goes, and
        returns their mean weighted by questions. ``counts`` gets the questions scored per difficulty."""

        scores: dict[str, float] = {}
        totals: dict[str, float] = {}
        scored = 0
        for name, all_questions in self._builtin[task]:
            if over_time():
                cut.append(f"{name} (over {self.max_seconds:g} s)")
                continue
            questions = []
            for q in all_questions:
                size = len(encode(tokenizer, q.prompt))
                if spent_tokens + size > self.max_tokens:
                    break
                questions.append(q)
                spent_tokens += size
            if len(questions) < len(all_questions):
                dropped = len(all_questions) - len(questions)
                cut.append(
                    f"{name} ({dropped} of {len(all_questions)} questions, over {self.max_tokens} tokens)"
                )
            if not questions:
                continue
            counts[name] = len(questions)
            result = self._score_shared(trainer, model, tokenizer, questions)
            if name != task:
                metrics.update({f"eval/{name}/{key}": value for key, value in result.items()})
            for key, value in result.items():
                totals[key] = totals.get(key, 0.0) + value * len(questions)
            scored += len(questions)
        if scored:
            scores.update({f"{task}/{key}": value / scored for key, value in totals.items()})
        return scores, spent_tokens

    def _score_shared(self, trainer: L.Trainer, model, tokenizer, questions: list) -> dict[str, float]:
        """Scores of ``questions``, each rank scoring every ``world size``-th one through the strategy's model
        (a sharded network gathers its parameters in its own forward), the counts summed over ranks."""
        world, rank = trainer.world_size, trainer.global_rank
        mine = questions[rank::world]
        self.scored_here += len(mine)
        counts = count_correct(
            model,
            tokenizer,
            mine,
            self.exit_thresholds,
            self.batch_size,
            forward=trainer.strategy.model,
            pad_to=-(-len(questions) // world),  # every rank runs as many forwards
            filler=questions[0],
        )
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        return scores_from_counts(counts, model.config.total_ut_steps, self.exit_thresholds)

    def _lm_eval(
        self, trainer: L.Trainer, pl_module: L.LightningModule, tokenizer, task: str
    ) -> dict[str, float]:
        """Scores of an lm-eval task; under several ranks lm-eval splits its documents over them, every forward
        runs through the strategy's wrapped module and every rank gets rank 0's metrics."""
        # lm-eval is an optional dependency (the `eval` extra); only lm-eval tasks need it.
        from ouro.eval.runner import evaluate

        scored: dict[str, int] = {}
        results = evaluate(
            pl_module.net,
            tokenizer,
            task,
            exit_thresholds=self.exit_thresholds,
            limit=self.limit,
            batch_size=self.batch_size,
            include_path=self.include_path,
            progress=False,
            distributed=trainer.world_size > 1,
            forward_wrapper=through_strategy(trainer, pl_module),
            scored=scored,
        )
        self.scored_here += sum(scored.values())
        scores: dict[str, float] = {}
        for name, per_setting in results.tasks.items():
            for key, result in per_setting.items():
                scores[f"{name}/{key}"] = results.metric(name, key)
                if not key.startswith("step"):
                    scores[f"{name}/{key}/depth"] = result.mean_depth
        return scores


def through_strategy(trainer: L.Trainer, pl_module: L.LightningModule) -> Callable[[Callable[[], Any]], Any]:
    """A ``forward_wrapper`` (`ouro.eval.backend.OuroEvalLM`): ``run(fn)`` returns ``fn()``, called inside the
    forward of the strategy's wrapped module (``trainer.strategy.model``: FSDP1 gathers its root unit there) and
    inside the network's own forward (FSDP2's root unit), so a sharded model's parameters are gathered while
    ``fn`` reads them, as in a training step. Both forwards are swapped for ``fn`` for that one call only (as
    Lightning's own forward redirection does for ``training_step``); under no gradient, the wrappers run no
    collective of their own."""
    wrapper, net = trainer.strategy.model, pl_module.net

    def run(fn: Callable[[], Any]) -> Any:
        result: list[Any] = []

        def inner(*_: Any, **__: Any) -> None:
            result.append(fn())

        def outer(*_: Any, **__: Any) -> None:
            net()  # through the network's hooks (FSDP2), into ``inner``

        modules = {pl_module: outer, net: inner}
        saved = {module: module.__dict__.get("forward") for module in modules}
        try:
            for module, forward in modules.items():
                module.forward = forward
            with torch.no_grad():
                wrapper()
        finally:
            for module, previous in saved.items():
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous
        return result[0]

    return run
