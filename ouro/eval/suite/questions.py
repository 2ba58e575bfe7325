"""Fixed evaluation questions and the matching training documents, kept apart by seed and by prompt.

Evaluation questions of ``(family, difficulty)`` come from their own seed, so they never change; training
documents come from other seeds and any document that starts with an evaluation prompt is dropped, so a model
never trains on a question it is scored on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ouro.eval.suite.families import Question, family

EVAL_SIZE = 250
"""Questions per task (per family and difficulty) in the materialised suite."""


def eval_questions(name: str, difficulty: int, count: int = EVAL_SIZE) -> list[Question]:
    """The first ``count`` evaluation questions of family ``name`` at ``difficulty`` (always the same ones)."""
    source = family(name)
    if difficulty not in source.difficulties:
        raise ValueError(
            f"difficulty {difficulty} is outside {name!r}'s range "
            f"{source.difficulties.start}..{source.difficulties.stop - 1}"
        )
    rng = random.Random(f"ouro-eval/{name}/d{difficulty}")
    return [source.question(rng, difficulty) for _ in range(count)]


def _eval_prompts(name: str, difficulties: Iterable[int]) -> set[str]:
    return {q.prompt for d in difficulties for q in eval_questions(name, d)}


def curriculum_difficulty(
    index: int,
    count: int,
    difficulties: list[int],
    rng: random.Random,
    weights: Sequence[int] | None = None,
    rehearse: bool = True,
) -> int:
    """Difficulty of document ``index`` of ``count`` under the curriculum: the run is cut into one phase per
    difficulty (of equal length, or in proportion to ``weights``); with ``rehearse``, phase k draws half of its
    documents at its own difficulty and half from the easier ones, so easy questions keep being rehearsed."""
    weights = list(weights or [1] * len(difficulties))[: len(difficulties)]
    position = index * sum(weights) / max(count, 1)
    phase = next((k for k in range(len(weights)) if position < sum(weights[: k + 1])), len(weights) - 1)
    if phase == 0 or not rehearse or rng.random() < 0.5:
        return difficulties[phase]
    return difficulties[rng.randrange(phase)]


def training_documents(
    name: str,
    count: int,
    difficulties: list[int] | None = None,
    curriculum: bool = True,
    seed: int = 0,
) -> list[tuple[int, str]]:
    """``count`` ``(difficulty, text)`` training documents of family ``name``, none starting with an evaluation
    prompt. ``curriculum``: in order of increasing difficulty (see `curriculum_difficulty`; train without
    shuffling to keep the order); otherwise difficulties drawn uniformly."""
    source = family(name)
    difficulties = sorted(difficulties or source.difficulties)
    held_out = _eval_prompts(name, difficulties)
    rng = random.Random(f"ouro-train/{name}/{seed}")
    documents = []
    while len(documents) < count:
        if curriculum:
            difficulty = curriculum_difficulty(
                len(documents),
                count,
                difficulties,
                rng,
                source.curriculum_weights,
                source.rehearse,
            )
        else:
            difficulty = rng.choice(difficulties)
        prompt, text = source.document(rng, difficulty)
        if prompt not in held_out:
            documents.append((difficulty, text))
    return documents
