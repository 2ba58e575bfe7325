"""``ouro eval`` end to end on local lm-eval tasks (YAML over JSONL, no network), and its one-line errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import build_tiny_model, write_local_tasks

from ouro.cli import main

pytestmark = pytest.mark.usefixtures("hf_offline")

DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "London", "Rome"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["four", "five", "three"], "answer": 0},
    {"question": "The sky on a clear day is", "choices": ["green", "blue", "red"], "answer": 1},
    {"question": "Water is", "choices": ["dry", "solid", "wet"], "answer": 2},
    {"question": "Fire is", "choices": ["hot", "cold", "quiet"], "answer": 0},
]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_local_tasks(tmp_path_factory.mktemp("tasks"), DOCS, "toy_choice", "toy_answer")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, builtin_tokenizer):
    """A tiny exported model folder (config.json, model.safetensors, tokenizer.json)."""
    folder = tmp_path_factory.mktemp("model")
    tokenizer = builtin_tokenizer
    model = build_tiny_model(gate_std=0.5, vocab_size=tokenizer.get_vocab_size())
    model.save_pretrained(folder, dtype=torch.float32)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, model, tokenizer


@torch.no_grad()
def reference_accuracy(model, tokenizer, passes: int) -> float:
    """Multiple-choice accuracy from ``model.forward``: argmax over choices of the summed log-probabilities
    of " <choice>" after the question, at pass ``passes``."""
    correct = 0
    for doc in DOCS:
        scores = []
        for choice in doc["choices"]:
            context = tokenizer.encode(doc["question"], add_special_tokens=False).ids
            whole = tokenizer.encode(doc["question"] + " " + choice, add_special_tokens=False).ids
            n = len(whole) - len(context)
            out = model(torch.tensor([whole[:-1]]), num_steps=passes)
            logprobs = torch.log_softmax(model.logits(out, passes - 1)[0].float(), -1)[-n:]
            scores.append(float(logprobs.gather(-1, torch.tensor(whole[-n:])[:, None]).sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return correct / len(DOCS)


def test_ouro_eval_runs_local_tasks_at_every_depth(tasks, exported, tmp_path, capsys):
    folder, model, tokenizer = exported
    out = tmp_path / "results"
    main(
        [
            "eval",
            str(folder),
            "--tasks",
            "toy_choice,toy_answer",
            "--include_path",
            str(tasks),
            "--depths",
            "1-5",
            "--exit_thresholds",
            "0.5",
            "--gate",
            "--out",
            str(out),
            "--progress",
            "false",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    keys = ["step1", "step2", "step3", "step4", "step5", "q0.5", "gate"]
    assert [s["key"] for s in results["depth_settings"]] == keys
    for step in range(1, 6):
        entry = results["results"]["toy_choice"][f"step{step}"]
        assert entry["acc,none"] == pytest.approx(reference_accuracy(model, tokenizer, step))
        assert entry["mean_depth"] == step and entry["tokens_per_second"] > 0
    assert 1 <= results["results"]["toy_choice"]["q0.5"]["mean_depth"] < 4
    assert results["results"]["toy_choice"]["gate"]["mean_depth"] == 4  # early_exit_threshold 1.0
    assert set(results["results"]["toy_answer"]) == set(keys)
    assert results["request_types"] == {"toy_choice": "loglikelihood", "toy_answer": "generate_until"}
    assert results["generation"]["settings"]["q0.5"].startswith("Q-exit at q = 0.5")
    # The mode of every setting: under Q-exit, log-likelihood runs every pass, generation exits early.
    assert set(results["scoring"]) == set(keys)
    assert results["scoring"]["step2"]["loglikelihood"].startswith(
        "static exit: every token runs passes 1..2"
    )
    assert "every token runs all 4 passes" in results["scoring"]["q0.5"]["loglikelihood"]
    assert "real early exit" in results["scoring"]["q0.5"]["generation"]
    assert "logits only" in results["scoring"]["gate"]["loglikelihood"]
    assert "toy_choice" in results["configs"] and "toy_choice" in results["versions"]  # lm-eval's own keys
    assert (out / "results.md").read_text().count("| toy_choice |") == len(keys)
    assert (out / "accuracy_vs_step.png").stat().st_size > 0
    assert (out / "accuracy_vs_depth.png").stat().st_size > 0
    assert "| toy_answer | q0.5 | exact_match,none |" in capsys.readouterr().out


def test_lm_eval_runs_the_registered_backend_from_model_args(tasks, exported):
    import lm_eval

    import ouro.eval.backend  # noqa: F401  (registers "ouro", as `python -m ouro.eval` does)
    from ouro.eval.runner import task_manager

    folder, model, tokenizer = exported
    results = lm_eval.simple_evaluate(
        model="ouro",
        model_args=f"pretrained={folder},exit_step=2",
        tasks=["toy_choice"],
        task_manager=task_manager([str(tasks)]),
        device="cpu",
        bootstrap_iters=0,
    )
    assert results["results"]["toy_choice"]["acc,none"] == pytest.approx(
        reference_accuracy(model, tokenizer, 2)
    )
    assert results["config"]["depth_setting"] == "step2"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--tasks", "no_such_task"], "--tasks: unknown lm-eval task 'no_such_task'"),
        (["--tasks", "toy_choice", "--depths", "0"], "--depths: exit steps count passes from 1"),
        (["--tasks", "toy_choice", "--depths", "0-3"], "--depths: exit steps count passes from 1"),
        (["--tasks", "toy_choice", "--exit_thresholds", "0.5,1.5"], "--exit_thresholds: a Q-exit threshold"),
    ],
)
def test_bad_options_end_with_one_line(tasks, exported, tmp_path, capsys, options, message):
    folder, _, _ = exported
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(folder), "--include_path", str(tasks), "--out", str(tmp_path / "r"), *options])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"ouro: error: {message}") and "\n" not in error
    assert not (tmp_path / "r").exists()


def test_a_folder_without_a_model_ends_with_one_line(tasks, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(empty), "--tasks", "toy_choice", "--include_path", str(tasks)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ouro: error:") and str(empty) in error and "\n" not in error


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--tasks",
        "--depths",
        "--exit_thresholds",
        "--gate",
        "--limit",
        "--include_path",
        "--out",
    ):
        assert option in text
    assert "beyond the trained" in text and "Q-exit" in text


def test_evaluate_on_a_training_model_restores_its_mode(tasks, exported):
    from ouro.eval.runner import evaluate

    _, model, tokenizer = exported
    model.train()
    try:
        results = evaluate(model, tokenizer, "toy_choice", depths="1,2", limit=2, include_path=str(tasks))
    finally:
        was_training = model.training
        model.eval()
    assert was_training
    assert list(results.tasks["toy_choice"]) == ["step1", "step2"]
    assert results.tasks["toy_choice"]["step1"].requests == 2 * 3  # two documents, three choices each
    assert results.flat()["toy_choice/step2"] == results.metric("toy_choice", "step2")


@pytest.mark.parametrize(
    "model, folder",
    [
        ("runs/quickstart/checkpoints/last.ckpt", "eval/quickstart-last"),
        ("runs/quickstart", "eval/quickstart"),
        ("out/ouro-1.4b/", "eval/ouro-1.4b"),
        ("ByteDance/Ouro-1.4B", "eval/Ouro-1.4B"),
        ("step.ckpt", "eval/step"),
    ],
)
def test_default_output_folder_is_named_after_the_model(model, folder):
    from pathlib import Path

    from ouro.eval.cli import default_output

    assert default_output(model) == Path(folder)


def test_python_m_ouro_eval_is_lm_evals_command_line_with_the_backend(tasks, exported):
    import subprocess
    import sys

    folder, model, tokenizer = exported
    command = [sys.executable, "-m", "ouro.eval", "--model", "ouro", "--model_args"]
    command += [f"pretrained={folder},exit_step=2", "--tasks", "toy_choice", "--include_path", str(tasks)]
    result = subprocess.run(
        [*command, "--device", "cpu"], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("|toy_choice"))
    value = float(row.split("|")[7])
    assert value == pytest.approx(reference_accuracy(model, tokenizer, 2), abs=1e-4)
