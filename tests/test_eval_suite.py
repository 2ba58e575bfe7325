"""The built-in offline evaluation suite: generators, training split, lm-eval task files, direct scoring."""

from __future__ import annotations

import json
import operator
import random
import re
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from ouro.eval.suite import (
    FAMILIES,
    eval_questions,
    family,
    materialize,
    score_questions,
    task_names,
    training_documents,
)
from ouro.eval.suite.questions import curriculum_difficulty


# ------------------------------------------------------------------------------ independent reference solvers
def _solve_binding(statements: str, asked: str) -> tuple[str, int]:
    table = dict(s.split(" = ") for s in re.findall(r"[a-z] = \w", statements))
    hops, value = 0, asked
    while not value.isdigit():
        value, hops = table[value], hops + 1
    return value, hops


def _solve_arith(expression: str) -> str:
    tokens = expression.split()
    value = int(tokens[0])
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        value = ops[op](value, int(operand))
    return str(value % 10)


def _solve_lookup(table: str, start: str, times: int) -> str:
    function = dict(pair.split(" > ") for pair in re.findall(r"[a-z] > [a-z]", table))
    for _ in range(times):
        start = function[start]
    return start


def _solve_roots(statements: str, asked: str) -> tuple[str, int]:
    parent = dict(s.split(">") for s in statements.split())
    links, letter = 1, parent[asked.split(">")[0]]
    assert asked in statements.split(), "the asked statement is one of the prompt's"
    while parent[letter] != letter:
        letter, links = parent[letter], links + 1
    return letter, links


def _solve(prompt: str) -> tuple[str, int]:
    """(answer, number of steps) of a prompt, computed from its text alone."""
    kind, body = prompt.split(": ", 1)
    if kind == "roots":
        statements, asked = re.fullmatch(r"(.*) \? ([a-z]>[a-z])", body).groups()
        return _solve_roots(statements, asked)
    if kind == "bind":
        statements, asked = re.fullmatch(r"(.*) \? ([a-z]) =", body).groups()
        return _solve_binding(statements, asked)
    if kind == "arith":
        expression = body.removesuffix(" =")
        return _solve_arith(expression), len(expression.split()) // 2
    table, start, times = re.fullmatch(r"(.*) \? ([a-z]) (\d+) =", body).groups()
    return _solve_lookup(table, start, int(times)), int(times)


def _queries(name: str, text) -> list[tuple[str, str]]:
    """Every (prompt, answer) a training document asks and answers, as prompts of `question` form."""
    if name == "roots":  # segments: the prompt, then (answer, next question) pairs; only the answers train
        assert [s["train"] for s in text] == [False, True] * (len(text) // 2)
        head = text[0]["text"].rsplit(" ? ", 1)[0]
        asked = [text[0]["text"].rsplit(" ? ", 1)[1]] + [s["text"].removeprefix(" ? ") for s in text[2::2]]
        return [(f"{head} ? {q}", a["text"].strip()) for q, a in zip(asked, text[1::2])]
    if name == "arith":
        return [(f"arith: {e.strip()} =", a) for e, a in re.findall(r"([\d +\-*]+) = (\d)", text[7:])]
    head, *asked = text.split(" ? ")
    return [(f"{head} ? {q.rsplit(' = ', 1)[0]} =", q.rsplit(" = ", 1)[1]) for q in asked]


# --------------------------------------------------------------------------------------------- generators
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_questions_are_deterministic_right_and_as_hard_as_their_difficulty(name):
    for difficulty in FAMILIES[name].difficulties:
        questions = eval_questions(name, difficulty, 40)
        assert questions == eval_questions(name, difficulty, 40)
        for q in questions:
            answer, steps = _solve(q.prompt)
            assert (q.answer, steps, q.difficulty) == (answer, difficulty, difficulty)
            assert q.choices[q.label] == q.answer
        assert len({q.prompt for q in questions}) > 30  # not one question repeated
    if name == "binding":  # the distractor chain ends in another constant: copying a digit is not enough
        for q in eval_questions(name, 3, 40):
            digits = re.findall(r"= (\d)", q.prompt)
            assert len(set(digits)) == 2 and q.answer in digits


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_training_documents_answer_right_and_never_start_with_an_eval_question(name):
    difficulties = list(FAMILIES[name].difficulties)[:3]
    documents = training_documents(name, 300, difficulties)
    assert documents == training_documents(name, 300, difficulties)
    assert documents != training_documents(name, 300, difficulties, seed=1)
    held_out = {q.prompt for d in difficulties for q in eval_questions(name, d)}
    for difficulty, text in documents:
        queries = _queries(name, text)
        assert len(queries) > 1  # several answered queries per document
        assert queries[0][0] not in held_out
        for prompt, answer in queries:
            assert _solve(prompt)[0] == answer, (prompt, answer)
        if name == "roots":  # questions of every depth up to the document's difficulty, roots included
            assert max(_solve(p)[1] for p, _ in queries) <= difficulty
        else:
            assert _solve(queries[0][0])[1] == difficulty


def test_roots_words_are_single_tokens_of_its_tokenizer_and_roots_are_the_plausible_answers():
    from ouro.chat import chat_token_ids
    from ouro.data.tokenizer import eos_token_id
    from ouro.eval.suite.word_tokenizer import UNKNOWN, word_tokenizer

    roots = family("roots")
    tokenizer = word_tokenizer(roots.words())
    assert tokenizer.get_vocab_size() == 4 + len(set(roots.words())) == 4 + 2 + 12 + 12 * 12
    assert eos_token_id(tokenizer) == 0 and chat_token_ids(tokenizer) == (1, 2)
    unknown = tokenizer.token_to_id(UNKNOWN)
    for q in eval_questions("roots", 3, 20):
        ids = tokenizer.encode(q.prompt + " " + q.answer, add_special_tokens=False).ids
        assert len(ids) == len((q.prompt + " " + q.answer).split()) and unknown not in ids
        statements = q.prompt.split(": ", 1)[1].split(" ? ")[0].split()
        self_parents = {s[0] for s in statements if s[0] == s[2]}
        assert len(statements) == 12 and len(self_parents) == 3 and q.answer in self_parents
    assert tokenizer.decode(tokenizer.encode("roots: a>b ? a>b b").ids) == "roots: a>b ? a>b b"


def test_curriculum_goes_from_easy_to_hard_and_keeps_rehearsing():
    rng = random.Random(0)
    drawn = [curriculum_difficulty(i, 400, [1, 2, 3, 4], rng) for i in range(400)]
    phases = [drawn[k * 100 : (k + 1) * 100] for k in range(4)]
    assert set(phases[0]) == {1}
    for k, phase in enumerate(phases[1:], start=1):
        assert max(phase) == k + 1 and 30 < phase.count(k + 1) < 80
    assert set(phases[3]) == {1, 2, 3, 4}
    uniform = [d for d, _ in training_documents("binding", 200, [1, 2], curriculum=False)]
    assert uniform[:100].count(2) > 25
    # Weighted phases without rehearsal (the roots family): 1/6, 1/6, then 4/6 of the run at the hardest.
    drawn = [
        curriculum_difficulty(i, 600, [1, 2, 3], rng, weights=(1, 1, 4), rehearse=False) for i in range(600)
    ]
    assert drawn == [1] * 100 + [2] * 100 + [3] * 400
    roots = [d for d, _ in training_documents("roots", 60, [1, 2, 3])]
    assert roots == [1] * 10 + [2] * 10 + [3] * 40


def test_bad_family_or_difficulty_says_what_exists():
    with pytest.raises(ValueError, match="unknown built-in eval family 'nope'.*binding"):
        family("nope")
    with pytest.raises(ValueError, match="difficulty 9 is outside 'binding'"):
        eval_questions("binding", 9)


# ------------------------------------------------------------------------------------------- lm-eval files
def test_materialize_is_deterministic_and_idempotent(tmp_path):
    root = materialize(tmp_path / "a", size=10)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    expected = {f"{t}.{ext}" for t in task_names() for ext in ("yaml", "jsonl")}
    assert {p.name for p in files} == expected | {f"_ouro_{f}.yaml" for f in FAMILIES}
    mtimes = {p: (root / p).stat().st_mtime_ns for p in files}
    assert materialize(tmp_path / "a", size=10) == root
    assert mtimes == {p: (root / p).stat().st_mtime_ns for p in files}  # nothing rewritten
    other = materialize(tmp_path / "b", size=10)
    for p in files:
        if p.suffix == ".jsonl":
            assert (other / p).read_bytes() == (root / p).read_bytes()
    rows = [
        json.loads(line) for line in (root / "binding" / "ouro_binding_d2.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in rows] == [q.prompt for q in eval_questions("binding", 2, 10)]


def test_lm_eval_loads_the_tasks_offline(tmp_path, hf_offline):
    from lm_eval.tasks import TaskManager

    root = materialize(tmp_path, size=5)
    manager = TaskManager(include_path=str(root), include_defaults=False)
    loaded = manager.load(["ouro_binding_d3", "ouro_lookup"])
    tasks = loaded["tasks"]
    assert set(tasks) == {"ouro_binding_d3"} | {f"ouro_lookup_d{d}" for d in FAMILIES["lookup"].difficulties}
    assert "ouro_lookup" in {str(getattr(g, "group", g)) for g in loaded["groups"]} | set(
        map(str, loaded["group_map"])
    )
    task = tasks["ouro_binding_d3"]
    docs = list(task.test_docs())
    question = eval_questions("binding", 3, 5)[0]
    assert task.doc_to_text(docs[0]) == question.prompt
    assert task.doc_to_choice(docs[0]) == list(question.choices)
    assert task.doc_to_target(docs[0]) == question.label
    assert len(docs) == 5


# ------------------------------------------------------------------------------------------- direct scoring
def _reference_scores(model, tokenizer, questions, thresholds):
    """One question at a time, no padding: arg-max over the choices' log-probabilities at each step."""
    from ouro.objective import exit_distribution

    steps = model.config.total_ut_steps
    hits = torch.zeros(steps)
    q_hits, q_depth = torch.zeros(len(thresholds)), torch.zeros(len(thresholds))
    for q in questions:
        ids = torch.tensor([tokenizer.encode(q.prompt).ids])
        out = model(ids)
        choice_ids = [tokenizer.encode(" " + c).ids[0] for c in q.choices]
        step_hit = []
        for t in range(steps):
            logprobs = torch.log_softmax(model.logits(out, t)[0, -1], -1)
            step_hit.append(int(logprobs[choice_ids].argmax()) == q.label)
        hits += torch.tensor(step_hit, dtype=torch.float)
        p = exit_distribution(out.gate_logits[0, -1])
        for i, threshold in enumerate(thresholds):
            exit_step = next(t for t in range(steps) if p[: t + 1].sum() >= threshold or t == steps - 1)
            q_hits[i] += step_hit[exit_step]
            q_depth[i] += exit_step + 1
    n = len(questions)
    result = {f"step{t + 1}": float(hits[t]) / n for t in range(steps)}
    for i, threshold in enumerate(thresholds):
        result[f"q{threshold:g}"], result[f"q{threshold:g}/depth"] = (
            float(q_hits[i]) / n,
            float(q_depth[i]) / n,
        )
    return result


def test_direct_scores_equal_one_question_at_a_time(builtin_tokenizer):
    # A gate bias of -0.5 spreads the exits so that Q-exit differs between thresholds.
    model = build_tiny_model(gate_bias=-0.5, vocab_size=builtin_tokenizer.get_vocab_size(), total_ut_steps=3)
    questions = [q for d in (1, 3) for q in eval_questions("binding", d, 12)] + eval_questions("lookup", 2, 8)
    thresholds = (0.3, 0.6, 1.0)
    with torch.no_grad():
        expected = _reference_scores(model, builtin_tokenizer, questions, thresholds)
    got = score_questions(model, builtin_tokenizer, questions, thresholds, batch_size=5)
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key]), key
    assert expected["q1/depth"] == 3 and expected["q0.3/depth"] < 3


def test_lm_eval_through_ouro_eval_scores_what_the_direct_scorer_scores(builtin_tokenizer, hf_offline):
    """The materialised YAMLs run end to end in lm-eval through the ``ouro`` backend, with the same numbers."""
    from ouro.eval.runner import evaluate

    model = build_tiny_model(1, vocab_size=builtin_tokenizer.get_vocab_size(), total_ut_steps=2)
    results = evaluate(
        model, builtin_tokenizer, "ouro_binding_d2", exit_thresholds=[0.6], limit=16, progress=False
    )
    direct = score_questions(model, builtin_tokenizer, eval_questions("binding", 2, 16), (0.6,))
    for key in ("step1", "step2", "q0.6"):
        assert results.metric("ouro_binding_d2", key) == pytest.approx(direct[key]), key


def test_training_source_prepares_curriculum_shards(tmp_path, monkeypatch):
    import ouro.data.builtin as builtin
    from ouro.data.builtin_sources import builtin_dirs
    from ouro.eval.suite import training_data

    tokenizer = builtin.builtin_tokenizer_path()
    monkeypatch.setenv("OURO_CACHE", str(tmp_path))
    monkeypatch.setattr(training_data, "builtin_tokenizer_path", lambda: tokenizer)
    monkeypatch.setattr(training_data, "DEFAULT_TRAIN_DOCUMENTS", 400)
    monkeypatch.setattr(training_data, "VAL_DOCUMENTS", 40)
    dirs = builtin_dirs("builtin-binding", "pretrain")
    assert all((d / "manifest.json").is_file() for d in dirs.values())
    (folder,) = (tmp_path / "suite").glob("binding-*")
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [t for _, t in training_documents("binding", 400, [1, 2, 3, 4])]
    assert max(r["difficulty"] for r in rows[:100]) == 1 and max(r["difficulty"] for r in rows[300:]) == 4
    assert builtin_dirs("builtin-binding", "pretrain") == dirs  # prepared once


def test_roots_source_prepares_answer_only_sft_shards_with_its_word_tokenizer(tmp_path, monkeypatch):
    from ouro.data.builtin_sources import builtin_dirs
    from ouro.data.sft import SFTDataModule
    from ouro.eval.suite import training_data

    monkeypatch.setenv("OURO_CACHE", str(tmp_path))
    monkeypatch.setitem(training_data.TRAIN_DOCUMENTS, "roots", 200)
    monkeypatch.setattr(training_data, "VAL_DOCUMENTS", 20)
    dirs = builtin_dirs("builtin-roots", "sft")
    dm = SFTDataModule(sources="builtin-roots", val_source="builtin-roots", num_workers=0, shuffle=False)
    dm.setup("fit")
    assert dm.seq_len == training_data.SFT_SEQ_LEN and Path(dm._val_dir) == dirs["val"]
    from ouro.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(dm.tokenizer_path)
    batch = next(iter(dm.train_dataloader()))
    words = tokenizer.decode(batch["input_ids"][0].tolist()).split()
    answers = tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100].tolist()).split()
    # The labels are the answers of the block's documents, in order: every letter after a question's statement.
    asked_then_answer = [words[i + 1] for i, w in enumerate(words[:-1]) if words[i - 1] == "?" and ">" in w]
    assert answers == asked_then_answer and len(answers) == 2 * family("roots").queries
