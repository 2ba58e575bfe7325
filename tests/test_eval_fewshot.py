"""A depth sweep over a few-shot task scores the same prompts at every setting: one forward serves the sweep,
and each setting's results equal a run of that setting alone."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from conftest import build_tiny_model

import ouro.eval.backend as backend
from ouro.eval.backend import OuroEvalLM
from ouro.eval.runner import evaluate

pytestmark = pytest.mark.usefixtures("hf_offline")

QUESTIONS = [
    ("The capital of France is", ["Paris", "London", "Rome"], 0),
    ("Two plus two equals", ["four", "five", "three"], 0),
    ("The sky on a clear day is", ["green", "blue", "red"], 1),
    ("Water is", ["dry", "solid", "wet"], 2),
    ("Fire is", ["hot", "cold", "quiet"], 0),
    ("Snow is", ["black", "white", "loud"], 1),
    ("A cat says", ["moo", "woof", "meow"], 2),
    ("Ice is", ["cold", "warm", "sweet"], 0),
    ("The sun rises in the", ["east", "west", "sea"], 0),
    ("Grass is", ["purple", "green", "salty"], 1),
]
TASK = """task: toy_fewshot
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
training_split: train
fewshot_split: train
test_split: test
num_fewshot: 3
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}} A:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
SETTINGS = {"depths": "1-3", "exit_thresholds": [0.5]}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fewshot")
    rows = [json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS]
    (folder / "train.jsonl").write_text("".join(rows))  # the shots: a pool of 10, 3 drawn per question
    (folder / "test.jsonl").write_text("".join(rows[:6]))
    (folder / "toy_fewshot.yaml").write_text(
        TASK.format(train=folder / "train.jsonl", test=folder / "test.jsonl")
    )
    return folder


@pytest.fixture(scope="module")
def model_and_tokenizer(builtin_tokenizer):
    model = build_tiny_model(gate_std=0.5, vocab_size=builtin_tokenizer.get_vocab_size())
    return model, builtin_tokenizer


def test_every_setting_scores_the_same_prompts_and_the_sweep_runs_one_forward(
    task_folder, model_and_tokenizer, monkeypatch
):
    model, tokenizer = model_and_tokenizer
    prompts: dict[str, list[tuple[str, str]]] = defaultdict(list)
    loglikelihood = OuroEvalLM.loglikelihood

    def recording(self, requests, disable_tqdm=False):
        prompts[self.active.key] += [request.args for request in requests]
        return loglikelihood(self, requests, disable_tqdm)

    scored: list[int] = []
    score_sequences = backend.score_sequences

    def counting(model, items, settings):
        scored.append(len(items))
        return score_sequences(model, items, settings)

    monkeypatch.setattr(OuroEvalLM, "loglikelihood", recording)
    monkeypatch.setattr(backend, "score_sequences", counting)
    evaluate(model, tokenizer, "toy_fewshot", include_path=str(task_folder), progress=False, **SETTINGS)

    keys = ["step1", "step2", "step3", "q0.5"]
    assert list(prompts) == keys
    first = prompts["step1"]
    assert len(first) == 6 * 3  # 6 questions x 3 choices
    assert all(context.count("Q: ") == 4 for context, _ in first)  # three shots, then the question
    for key in keys[1:]:
        assert prompts[key] == first, f"{key} scored other prompts than step1"
    # One forward per distinct (context, continuation) for the whole sweep: the later settings hit the cache.
    assert sum(scored) == len(set(first))

    # A second evaluation (as `EvalInTraining` runs one every N tokens) scores the same prompts again.
    prompts.clear()
    evaluate(model, tokenizer, "toy_fewshot", include_path=str(task_folder), progress=False, depths=1)
    assert prompts["step1"] == first


def test_each_setting_of_a_sweep_equals_a_run_of_that_setting_alone(
    task_folder, model_and_tokenizer, monkeypatch
):
    model, tokenizer = model_and_tokenizer
    answers: dict[str, list] = defaultdict(list)  # setting -> [(request, (log-likelihood, greedy)), ...]
    loglikelihood = OuroEvalLM.loglikelihood

    def recording(self, requests, disable_tqdm=False):
        results = loglikelihood(self, requests, disable_tqdm)
        answers[self.active.key] += [(r.args, result) for r, result in zip(requests, results)]
        return results

    monkeypatch.setattr(OuroEvalLM, "loglikelihood", recording)
    common = dict(include_path=str(task_folder), progress=False)
    sweep = evaluate(model, tokenizer, "toy_fewshot", **common, **SETTINGS)
    swept_answers, answers = dict(answers), defaultdict(list)
    alone = {
        "step1": evaluate(model, tokenizer, "toy_fewshot", depths=1, **common),
        "step2": evaluate(model, tokenizer, "toy_fewshot", depths=2, **common),
        "step3": evaluate(model, tokenizer, "toy_fewshot", depths=3, **common),
        "q0.5": evaluate(model, tokenizer, "toy_fewshot", depths="none", exit_thresholds=[0.5], **common),
    }
    for key, single in alone.items():
        assert swept_answers[key] == answers[key], f"{key}: other requests or scores than alone"
        swept = sweep.tasks["toy_fewshot"][key]
        one = single.tasks["toy_fewshot"][key]
        for metric in ("acc,none", "acc_norm,none"):
            assert swept.metrics[metric] == one.metrics[metric], (key, metric)
        assert swept.mean_depth == pytest.approx(one.mean_depth), key
