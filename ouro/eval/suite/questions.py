"""Fixed evaluation questions and the matching training documents, kept apart by seed and by prompt.

Evaluation questions of ``(family, difficulty)`` come from their own seed, so they never change, and their
prompts are distinct. Training documents come from other seeds, and none answers an evaluation question of its
family at any difficulty, in any of its queries, so a model never trains on a question it is scored on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ouro.eval.suite.families import Question, family

EVAL_SIZE = 250
"""Questions per task (per family and difficulty) in the materialised suite."""
_MAX_DRAWS_PER_QUESTION = 100  # a space too small for ``count`` distinct prompts ends in an error


def eval_questions(name: str, difficulty: int, count: int = EVAL_SIZE) -> list[Question]:
    """The first ``count`` evaluation questions of family ``name`` at ``difficulty`` (always the same ones,
    each prompt once: a repeated draw is skipped)."""
    source = family(name)
    if difficulty not in source.difficulties:
        raise ValueError(
            f"difficulty {difficulty} is outside {name!r}'s range "
            f"{source.difficulties.start}..{source.difficulties.stop - 1}"
        )
    rng = random.Random(f"ouro-eval/{name}/d{difficulty}")
    questions: dict[str, Question] = {}
    for _ in range(count * _MAX_DRAWS_PER_QUESTION):
        if len(questions) == count:
            break
        question = source.question(rng, difficulty)
        questions.setdefault(question.prompt, question)
    if len(questions) < count:
        raise ValueError(f"{name} d{difficulty} has fewer than {count} distinct questions; ask for fewer")
    return list(questions.values())


def eval_prompts(name: str) -> frozenset[str]:
    """Every evaluation prompt of family ``name``, at every difficulty of the suite."""
    return frozenset(q.prompt for d in family(name).difficulties for q in eval_questions(name, d))


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
    """``count`` ``(difficulty, text)`` training documents of family ``name``, none answering an evaluation
    question of the family (`eval_prompts`) in any query. ``curriculum``: in order of increasing difficulty
    (see `curriculum_difficulty`; train without shuffling to keep the order); otherwise difficulties drawn
    uniformly."""
    source = family(name)
    difficulties = sorted(difficulties or source.difficulties)
    held_out = eval_prompts(name)
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
        documents.append((difficulty, source.document(rng, difficulty, held_out)))
    return documents
