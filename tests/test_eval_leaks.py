"""No built-in evaluation question is answered anywhere in its family's training text, checked from outside.

The training text is regenerated exactly as the shards are written (`split_documents`), then searched with a
parser of its own: the generator's filter (`eval_prompts`, `Family.document`) is not used here.
"""

from __future__ import annotations

import dataclasses

import pytest

from ouro.eval.suite import FAMILIES, eval_questions, training_data
from ouro.eval.suite import families as families_module
from ouro.eval.suite.training_data import SPLITS, shard_key, split_documents


def answered_facts(document) -> set[tuple[str, str]]:
    """``(context, query with its answer)`` for every query a document answers, read from its text alone.

    ``bind: S ? f = 6 ? g = 2`` -> ``("bind: S", "f = 6")``, ...; ``lookup: T ? a 3 = b`` -> ``("lookup: T",
    "a 3 = b")``; roots segments joined: ``roots: S ? c>a b ? d>c b`` -> ``("roots: S", "c>a b")``, ...;
    ``arith: 5 - 8 = 7 ; 3 * 2 = 6`` -> ``("arith", "5 - 8 = 7")``, ...: each expression is its own question.
    """
    text = document if isinstance(document, str) else "".join(segment["text"] for segment in document)
    kind, body = text.split(": ", 1)
    if kind == "arith":
        return {("arith", part.strip()) for part in body.split(" ; ")}
    context, *queries = text.split(" ? ")
    return {(context, query.strip()) for query in queries}


def question_fact(prompt: str, answer: str) -> tuple[str, str]:
    """The same ``(context, query with its answer)`` for an evaluation question."""
    if prompt.startswith("arith: "):
        return "arith", f"{prompt.removeprefix('arith: ')} {answer}"
    context, query = prompt.rsplit(" ? ", 1)
    return context, f"{query} {answer}"


def test_the_parser_finds_a_question_in_a_hand_written_document():
    """The search itself can fail: a document that answers a question anywhere is caught."""
    assert question_fact("bind: a = 1 b = a ? b =", "1") in answered_facts(
        "bind: a = 1 b = a ? a = 1 ? b = 1"
    )
    assert question_fact("arith: 3 + 4 =", "7") in answered_facts("arith: 1 * 2 = 2 ; 3 + 4 = 7")
    roots = [
        {"text": "roots: a>a b>a ? a>a", "train": False},
        {"text": " a", "train": True},
        {"text": " ? b>a", "train": False},
        {"text": " a", "train": True},
    ]
    assert question_fact("roots: a>a b>a ? b>a", "a") in answered_facts(roots)
    assert question_fact("roots: a>a b>a ? b>a", "b") not in answered_facts(roots)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_evaluation_question_is_answered_in_the_training_text(name):
    answered: set[tuple[str, str]] = set()
    for split in SPLITS:
        for _, document in split_documents(name, split):
            answered |= answered_facts(document)
    for difficulty in FAMILIES[name].difficulties:
        questions = eval_questions(name, difficulty)
        leaked = [q.prompt for q in questions if question_fact(q.prompt, q.answer) in answered]
        assert not leaked, f"{name} d{difficulty}: {len(leaked)} of {len(questions)} leaked, e.g. {leaked[0]}"
        assert len({q.prompt for q in questions}) == len(questions), f"{name} d{difficulty} repeats a prompt"


def test_the_shard_cache_key_follows_the_generator_code_and_settings(tmp_path, monkeypatch):
    key = shard_key("binding")
    assert shard_key("binding") == key and shard_key("arith") != key

    copies = []
    for path in training_data.GENERATOR_FILES:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    monkeypatch.setattr(training_data, "GENERATOR_FILES", tuple(copies))
    assert shard_key("binding") == key
    families_copy = tmp_path / "families.py"
    families_copy.write_text(families_copy.read_text().replace('"bind: ', '"binding: '))
    assert shard_key("binding") != key  # an edit of the generator's code

    monkeypatch.undo()
    changed = dataclasses.replace(FAMILIES["binding"], num_variables=10)
    monkeypatch.setitem(families_module.FAMILIES, "binding", changed)
    assert shard_key("binding") != key  # a family field
    monkeypatch.undo()
    monkeypatch.setattr(training_data, "VAL_DOCUMENTS", 41)
    assert shard_key("binding") != key  # a split's size
    monkeypatch.undo()
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    assert shard_key("binding", tokenizer) != key  # the tokenizer the text is prepared with
