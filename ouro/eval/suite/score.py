"""Direct scoring of the built-in suite: one forward per batch scores every exit step and every Q-exit rule.

Every choice of a built-in question is one token, so lm-eval's multiple-choice accuracy (the choice with the
highest log-likelihood) is the arg-max of the next-token logits over the choice tokens at the prompt's last
position. Under Q-exit that position exits at the first step whose exit CDF reaches q, and the prediction is
read from that step; its depth is that step (1-based).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ouro.eval.suite.families import Question


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


@torch.no_grad()
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
    device = next(model.parameters()).device
    steps = model.config.total_ut_steps
    correct = torch.zeros(steps)
    q_correct = torch.zeros(len(thresholds))
    q_depth = torch.zeros(len(thresholds))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
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
            padded = torch.tensor([[i >= len(c) for i in range(width)] for c in choice_ids])
            labels = torch.tensor([q.label for q in chunk])
            out = model(ids.to(device), doc_ids=docs.to(device))
            last = [h[:, -1] for h in out.hidden_states]  # the position that predicts the answer
            per_step = torch.stack(
                [model.lm_head(h).float().cpu() for h in last], dim=1
            )  # batch, steps, vocab
            scores = per_step.gather(2, choices[:, None, :].expand(-1, steps, -1))
            chosen = scores.masked_fill(padded[:, None, :], float("-inf")).argmax(-1)  # batch, steps
            hit = chosen == labels[:, None]
            correct += hit.sum(0)
            if thresholds:
                from ouro.objective import exit_distribution, q_exit_steps

                probs = exit_distribution(out.gate_logits[:, -1].float().cpu())  # batch, steps
                for i, q in enumerate(thresholds):
                    exit_step = q_exit_steps(probs, q)
                    q_correct[i] += hit.gather(1, exit_step[:, None]).sum()
                    q_depth[i] += (exit_step + 1).sum()
    finally:
        model.train(was_training)
    n = len(questions)
    result = {f"step{t + 1}": float(correct[t]) / n for t in range(steps)}
    for i, q in enumerate(thresholds):
        result[f"q{q:g}"] = float(q_correct[i]) / n
        result[f"q{q:g}/depth"] = float(q_depth[i]) / n
    return result
