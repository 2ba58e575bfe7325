"""Synthetic multi-hop reasoning task: generator correctness and the per-step exact-match metric."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from conftest import build_tiny_model

from ouro.data.builtin import train_tokenizer
from ouro.data.synthetic import (
    exact_match_ids,
    exact_match_per_step,
    make_example,
    make_examples,
    write_jsonl,
)


def _solve(prompt: str, modulus: int = 10) -> int:
    """Independent solver: resolve the asked variable by recursive look-up of the shuffled statements."""
    body, asked = prompt.split(" ? ")
    asked = asked.rstrip(" =")
    table = dict(s.split("=") for s in body.split())

    def value(name: str) -> int:
        expr = table[name]
        if expr.isdigit():
            return int(expr)
        ref, op, operand = re.fullmatch(r"([a-z])([+\-*])(\d+)", expr).groups()
        return eval(f"{value(ref)} {op} {operand}") % modulus  # noqa: S307 (test-only, generated input)

    return value(asked)


@pytest.mark.parametrize("hops", [1, 3, 8])
def test_examples_are_correct_and_hops_set_difficulty(hops):
    rng = random.Random(hops)
    for _ in range(50):
        ex = make_example(rng, hops)
        assert ex.hops == hops and len(ex.prompt.split(" ? ")[0].split()) == hops + 1
        assert int(ex.answer) == _solve(ex.prompt)
    assert make_examples(5, (2, 4), seed=1) == make_examples(5, (2, 4), seed=1)
    assert {e.hops for e in make_examples(200, (2, 4), seed=1)} == {2, 3, 4}
    with pytest.raises(ValueError, match="hops"):
        make_example(rng, 0)


def test_write_jsonl_text_and_chat(tmp_path):
    examples = make_examples(3, 2)
    text = [json.loads(line) for line in write_jsonl(tmp_path / "t.jsonl", examples).read_text().splitlines()]
    assert text[0]["text"] == examples[0].prompt + examples[0].answer
    chat = [
        json.loads(line)
        for line in write_jsonl(tmp_path / "c.jsonl", examples, "chat").read_text().splitlines()
    ]
    assert chat[1]["messages"][1] == {"role": "assistant", "content": examples[1].answer.strip()}


def _greedy(model, prompt: list[int], n: int, step: int) -> list[int]:
    """Reference: greedy autoregressive decoding with step ``step``'s logits, one example at a time."""
    out = []
    for _ in range(n):
        logits = model.logits(model(torch.tensor([prompt + out])), step)
        out.append(int(logits[0, -1].argmax()))
    return out


def test_exact_match_per_step_equals_greedy_decoding(tmp_path):
    examples = make_examples(12, (1, 3), seed=0)
    tokenizer = train_tokenizer(
        [write_jsonl(tmp_path / "c.jsonl", make_examples(200, (1, 3)))], vocab_size=300
    )
    model = build_tiny_model(vocab_size=tokenizer.get_vocab_size(), total_ut_steps=3)
    encoded = [
        (
            tokenizer.encode(e.prompt, add_special_tokens=False).ids,
            tokenizer.encode(e.answer, add_special_tokens=False).ids,
        )
        for e in examples
    ]
    # Half the answers become what the model itself generates at step 1: the metric must count those as right.
    encoded = [(p, _greedy(model, p, len(a) + 1, 1) if i % 2 == 0 else a) for i, (p, a) in enumerate(encoded)]
    scores = exact_match_ids(model, encoded, batch_size=5)
    assert len(scores) == 3 and scores[1] >= 0.5
    for step in range(3):
        expected = sum(_greedy(model, p, len(a), step) == a for p, a in encoded) / len(encoded)
        assert scores[step] == pytest.approx(expected)
    # The text entry point tokenizes prompt and answer separately, as above.
    assert exact_match_per_step(model, tokenizer, examples) == exact_match_ids(
        model,
        [
            (
                tokenizer.encode(e.prompt, add_special_tokens=False).ids,
                tokenizer.encode(e.answer, add_special_tokens=False).ids,
            )
            for e in examples
        ],
    )
