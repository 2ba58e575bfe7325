"""Direct scoring of the built-in suite: one forward per batch scores every exit step and every Q-exit rule.

Every choice of a built-in question is one token, so lm-eval's multiple-choice accuracy (the choice with the
highest log-likelihood) is the arg-max of the next-token logits over the choice tokens at the prompt's last
position. Under Q-exit that position exits at the first step whose exit CDF reaches q, and the prediction is
read from that step; its depth is that step (1-based).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ouro.eval.suite.families import Question
from ouro.objective import exit_distribution, q_exit_steps


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` from a `tokenizers.Tokenizer` or a transformers tokenizer, no special tokens."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return list(encoded.ids if hasattr(encoded, "ids") else encoded)


def _choice_ids(tokenizer, question: Question) -> list[int]:
    ids = []
    for choice in question.choices:
        token = encode(tokenizer, " " + choice)
        if len(token) != 1:
            raise ValueError(
                f"choice {choice!r} is {len(token)} tokens with this tokenizer; the direct scorer needs one "
                "token per choice (score the task through lm-eval instead)"
            )
        ids.append(token[0])
    return ids


def count_correct(
    model,
    tokenizer,
    questions: Sequence[Question],
    thresholds: Sequence[float] = (),
    batch_size: int = 64,
    forward: Callable[..., Any] | None = None,
    pad_to: int | None = None,
    filler: Question | None = None,
) -> torch.Tensor:
    """Counts behind `score_questions`: ``[correct at step 1..T, correct under each threshold, summed depth under
    each threshold, questions]`` (float64, so counts from several ranks can be summed).

    ``forward(input_ids, doc_ids=...)`` returns the last position's logits of every step and its gate logits
    (default: ``model.last_position_logits``); under a data-parallel strategy it is the strategy's wrapped
    module (`ouro.module.OuroLM.forward`), so a sharded model gathers its parameters. ``pad_to``: score
    as many questions as that, repeating ``filler`` (default: the first question) with weight 0, so that every
    rank runs the same number of forwards (each is a collective under FSDP).
    """
    steps = model.config.total_ut_steps
    counts = torch.zeros(steps + 2 * len(thresholds) + 1, dtype=torch.float64)
    total = max(len(questions), pad_to or 0)
    if total == 0:
        return counts
    filler = questions[0] if questions else filler
    if filler is None:
        raise ValueError("count_correct needs a question to pad with (filler)")
    padded = list(questions) + [filler] * (total - len(questions))
    weights = torch.tensor([1.0] * len(questions) + [0.0] * (total - len(questions)), dtype=torch.float64)
    device = next(model.parameters()).device
    forward = forward or model.last_position_logits
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, total, batch_size):
                chunk = padded[start : start + batch_size]
                weight = weights[start : start + batch_size]
                prompts = [encode(tokenizer, q.prompt) for q in chunk]
                length = max(map(len, prompts))
                ids = torch.zeros(len(chunk), length, dtype=torch.long)
                docs = torch.zeros(len(chunk), length, dtype=torch.long)
                for row, prompt in enumerate(prompts):  # left padding in its own document (0)
                    ids[row, length - len(prompt) :] = torch.tensor(prompt)
                    docs[row, length - len(prompt) :] = 1
                choice_ids = [_choice_ids(tokenizer, q) for q in chunk]
                width = max(map(len, choice_ids))
                choices = torch.tensor([c + c[:1] * (width - len(c)) for c in choice_ids])  # batch, choices
                unused = torch.tensor([[i >= len(c) for i in range(width)] for c in choice_ids])
                labels = torch.tensor([q.label for q in chunk])
                # the position that predicts the answer: logits (batch, steps, vocab), gate logits (batch, steps)
                logits, gate_logits = forward(ids.to(device), doc_ids=docs.to(device))
                per_step = logits.float().cpu()
                scores = per_step.gather(2, choices[:, None, :].expand(-1, steps, -1))
                chosen = scores.masked_fill(unused[:, None, :], float("-inf")).argmax(-1)  # batch, steps
                hit = (chosen == labels[:, None]).double() * weight[:, None]
                counts[:steps] += hit.sum(0)
                if thresholds:
                    probs = exit_distribution(gate_logits.float().cpu())  # batch, steps
                    for i, q in enumerate(thresholds):
                        exit_step = q_exit_steps(probs, q)
                        counts[steps + i] += hit.gather(1, exit_step[:, None]).sum()
                        counts[steps + len(thresholds) + i] += ((exit_step + 1).double() * weight).sum()
                counts[-1] += weight.sum()
    finally:
        model.train(was_training)
    return counts


def scores_from_counts(counts: torch.Tensor, steps: int, thresholds: Sequence[float]) -> dict[str, float]:
    """Accuracy per exit step (``step1`` ..), under each Q-exit threshold (``q<q>``) and its mean depth
    (``q<q>/depth``) from `count_correct`'s counts."""
    n = float(counts[-1])
    if n == 0:
        raise ValueError("no questions to score")
    result = {f"step{t + 1}": float(counts[t]) / n for t in range(steps)}
    for i, q in enumerate(thresholds):
        result[f"q{q:g}"] = float(counts[steps + i]) / n
        result[f"q{q:g}/depth"] = float(counts[steps + len(thresholds) + i]) / n
    return result


def score_questions(
    model,
    tokenizer,
    questions: Sequence[Question],
    thresholds: Sequence[float] = (),
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy at every exit step (``step1`` ..) and under each Q-exit threshold (``q<q>`` with its mean depth
    ``q<q>/depth``), of a `OuroForCausalLM` on ``questions``."""
    if not questions:
        raise ValueError("no questions to score")
    counts = count_correct(model, tokenizer, questions, thresholds, batch_size)
    return scores_from_counts(counts, model.config.total_ut_steps, thresholds)
