"""A synthetic multi-hop reasoning task, the setting where loops should beat one pass at equal parameters.

Each example is a chain of modular assignments presented in shuffled order, e.g. ``q=c+3 c=7 h=q*2 ? h =``
with answer ``0`` (mod 10): resolving ``h`` takes one look-up plus one arithmetic operation per hop, so
``hops`` sets the difficulty. ``exact_match_per_step`` scores a looped model at every recurrent step.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Example:
    """One question: ``prompt`` (ends with ``=``), ``answer`` (the value as text) and the hop count."""

    prompt: str
    answer: str
    hops: int


def make_example(rng: random.Random, hops: int, modulus: int = 10, shuffle: bool = True) -> Example:
    """A chain of ``hops`` operations on top of one constant assignment, asked about its last variable."""
    if hops < 1 or modulus < 2:
        raise ValueError(f"hops must be >= 1 and modulus >= 2, got {hops} and {modulus}")
    if hops + 1 > len(string.ascii_lowercase):
        raise ValueError(f"at most {len(string.ascii_lowercase) - 1} hops (one letter per variable)")
    names = rng.sample(string.ascii_lowercase, hops + 1)
    value = rng.randrange(modulus)
    statements = [f"{names[0]}={value}"]
    for i in range(1, hops + 1):
        op, operand = rng.choice(OPS), rng.randrange(1, modulus)
        statements.append(f"{names[i]}={names[i - 1]}{op}{operand}")
        value = {"+": value + operand, "-": value - operand, "*": value * operand}[op] % modulus
    if shuffle:
        rng.shuffle(statements)
    return Example(prompt=" ".join(statements) + f" ? {names[-1]} =", answer=f" {value}", hops=hops)


def make_examples(n: int, hops: int | tuple[int, int], seed: int = 0, modulus: int = 10) -> list[Example]:
    """``n`` examples; ``hops`` is a fixed count or an inclusive range sampled uniformly."""
    rng = random.Random(seed)
    low, high = (hops, hops) if isinstance(hops, int) else hops
    return [make_example(rng, rng.randint(low, high), modulus) for _ in range(n)]


def write_jsonl(path: str | Path, examples: list[Example], format: Literal["text", "chat"] = "text") -> Path:
    """Write examples for ``ouro prepare``: ``text`` documents (prompt + answer), or ``chat`` conversations whose
    assistant turn is the answer (prepare with ``--format sft`` so only the answer trains)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for ex in examples:
            if format == "text":
                row = {"text": ex.prompt + ex.answer, "hops": ex.hops}
            else:
                row = {
                    "messages": [
                        {"role": "user", "content": ex.prompt},
                        {"role": "assistant", "content": ex.answer.strip()},
                    ],
                    "hops": ex.hops,
                }
            handle.write(json.dumps(row) + "\n")
    return path


def exact_match_per_step(model, tokenizer, examples: list[Example], batch_size: int = 64) -> list[float]:
    """Fraction of examples whose answer the model gets exactly right, for each recurrent step.

    Scored by teacher forcing: step t is right when the argmax of step t's logits matches every answer token,
    which is exactly when greedy decoding at step t would produce the answer. Prompts are left-padded per batch
    with their own document id so padding never enters attention.
    """
    encoded = [
        (
            tokenizer.encode(ex.prompt, add_special_tokens=False).ids,
            tokenizer.encode(ex.answer, add_special_tokens=False).ids,
        )
        for ex in examples
    ]
    return exact_match_ids(model, encoded, batch_size)


def exact_match_ids(model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 64) -> list[float]:
    """`exact_match_per_step` on token ids: ``(prompt_ids, answer_ids)`` pairs."""

    device = next(model.parameters()).device
    steps = model.config.total_ut_steps
    correct = torch.zeros(steps)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            length = max(len(p) + len(a) for p, a in chunk)
            ids = torch.zeros(len(chunk), length, dtype=torch.long)
            docs = torch.zeros(len(chunk), length, dtype=torch.long)
            targets = torch.full((len(chunk), length), -1, dtype=torch.long)
            for row, (prompt, answer) in enumerate(chunk):
                seq = prompt + answer
                pad = length - len(seq)
                ids[row, pad:] = torch.tensor(seq)
                docs[row, pad:] = 1  # the padding is document 0, the example document 1
                first = pad + len(prompt)  # position of the first answer token
                targets[row, first - 1 : length - 1] = torch.tensor(answer)
            out = model(ids.to(device), doc_ids=docs.to(device))
            scored = targets >= 0
            for t in range(steps):
                predicted = model.logits(out, t).argmax(-1).cpu()
                hit = ((predicted == targets) | ~scored).all(1)
                correct[t] += hit.sum()
    model.train(was_training)
    return (correct / max(len(encoded), 1)).tolist()
