"""Depth settings (parsing, keys, passes), the scoring forward on token ids, and EvalResults' outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model

from ouro.eval.backend import DepthStats
from ouro.eval.results import DepthResult, EvalResults
from ouro.eval.runner import _stats_of
from ouro.eval.scoring import Depth, depth_settings, parse_depths, parse_thresholds, score_sequences


@pytest.mark.parametrize(
    "spec, steps",
    [
        ("1-8", list(range(1, 9))),
        ("1,2,4", [1, 2, 4]),
        ("3", [3]),
        (5, [5]),
        ([2, 1, 2], [1, 2]),
        ("2-3,6", [2, 3, 6]),
    ],
)
def test_parse_depths(spec, steps):
    assert parse_depths(spec) == steps


@pytest.mark.parametrize("spec", ["0", "0-4", "-1", "a", "4-2", "1,x"])
def test_bad_depths_name_the_option(spec):
    with pytest.raises(ValueError, match="^--depths: "):
        parse_depths(spec)


def test_parse_thresholds():
    assert parse_thresholds("0.9,0.5,0.7") == [0.5, 0.7, 0.9]
    assert parse_thresholds(1.0) == [1.0]
    for bad in ("1.5", "0", "-0.2", "x"):
        with pytest.raises(ValueError, match="^--exit_thresholds: "):
            parse_thresholds(bad)


def test_settings_keys_and_passes():
    settings = depth_settings("2,6", "0.5", use_gate=True, trained_steps=4)
    assert [s.key for s in settings] == ["step2", "step6", "q0.5", "gate"]
    assert [s.passes(4) for s in settings] == [2, 6, 4, 4]
    assert [s.threshold(0.8) for s in settings] == [None, None, 0.5, 0.8]
    assert [s.key for s in depth_settings(trained_steps=3)] == ["step1", "step2", "step3"]
    assert [s.key for s in depth_settings(None, "0.5", trained_steps=2)] == ["step1", "step2", "q0.5"]
    assert [s.key for s in depth_settings("none", "0.5", trained_steps=2)] == ["q0.5"]
    with pytest.raises(ValueError, match="--depths none leaves nothing"):
        depth_settings("none", trained_steps=2)


@torch.no_grad()
def test_score_sequences_on_token_ids_equals_the_forward():
    model = build_tiny_model()
    sequences = [([5, 6, 7, 8, 9], 2), ([11, 12, 13], 1), ([3, 4, 5, 6, 7, 8, 9, 10], 5)]
    scores = score_sequences(model, sequences, [Depth("step", 1), Depth("step", 3)])
    for (tokens, n), score in zip(sequences, scores):
        out = model(torch.tensor([tokens[:-1]]), num_steps=3)
        for step in (1, 3):
            logprobs = torch.log_softmax(model.logits(out, step - 1)[0], -1)[-n:]
            want = logprobs.gather(-1, torch.tensor(tokens[-n:])[:, None]).sum()
            assert score[f"step{step}"].logprob == pytest.approx(float(want), abs=1e-4)
            assert score[f"step{step}"].tokens == n and score[f"step{step}"].depth_sum == step * n
    with pytest.raises(ValueError, match="continuation"):
        score_sequences(model, [([1, 2], 2)], [Depth("step", 1)])


def test_group_stats_sum_their_subtasks():
    stats = {
        ("a", "step1"): DepthStats(2, 10, 10.0, 40, 1.0),
        ("b", "step1"): DepthStats(1, 10, 30.0, 60, 1.0),
    }
    total = _stats_of("group", "step1", stats, {"group": ["a", "b"]})
    assert total.mean_depth == 2.0 and total.tokens_per_second == 50.0 and total.requests == 3


def test_results_json_table_and_plots(tmp_path):
    settings = depth_settings("1-2", "0.5", trained_steps=2)
    tasks = {
        "mc": {
            "step1": DepthResult({"alias": "mc", "acc,none": 0.25, "acc_stderr,none": "N/A"}, 1.0, 100.0, 4),
            "step2": DepthResult({"alias": "mc", "acc,none": 0.5, "acc_stderr,none": "N/A"}, 2.0, 50.0, 4),
            "q0.5": DepthResult({"alias": "mc", "acc,none": 0.5, "acc_stderr,none": "N/A"}, 1.5, 50.0, 4),
        },
        "ppl": {
            key: DepthResult({"word_perplexity,none": 10.0 - i, "bits_per_byte,none": 1.0}, i + 1.0, 10.0, 1)
            for i, key in enumerate(["step1", "step2", "q0.5"])
        },
    }
    results = EvalResults(settings, tasks, {"versions": {"mc": 1}}, {"total_ut_steps": 2})
    assert results.primary_metric("mc") == "acc,none"
    assert results.primary_metric("ppl") == "word_perplexity,none"
    assert results.flat()["mc/q0.5/mean_depth"] == 1.5
    written = results.write(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"]["mc"]["step2"] == {
        "alias": "mc",
        "acc,none": 0.5,
        "acc_stderr,none": "N/A",
        "mean_depth": 2.0,
        "tokens_per_second": 50.0,
        "requests": 4,
    }
    assert data["versions"] == {"mc": 1} and [s["key"] for s in data["depth_settings"]] == [
        "step1",
        "step2",
        "q0.5",
    ]
    assert "| mc | q0.5 | acc,none | 0.5000 | 1.50 | 50 |" in written["markdown"].read_text()
    for name in ("accuracy_vs_step.png", "accuracy_vs_depth.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    # A later run without static steps in the same folder leaves no stale accuracy_vs_step.png behind.
    only_q = {task: {"q0.5": r["q0.5"]} for task, r in tasks.items()}
    EvalResults([settings[-1]], only_q, model={"total_ut_steps": 2}).write(tmp_path)
    assert not (tmp_path / "accuracy_vs_step.png").exists() and (tmp_path / "accuracy_vs_depth.png").exists()


def test_table_shows_the_requested_group_and_only_a_small_groups_subtasks():
    from ouro.eval.results import MAX_SHOWN_SUBTASKS

    settings = depth_settings("1", trained_steps=1)
    many = [f"sub_{i}" for i in range(MAX_SHOWN_SUBTASKS + 1)]
    tasks = {name: {"step1": DepthResult({"acc,none": 0.5}, 1.0, 1.0)} for name in ("grp", "big", *many)}
    table = EvalResults(settings, tasks, requested=["grp"]).markdown()
    assert "| grp |" in table and "sub_0" not in table
    # A built-in family's difficulties follow their group, in order; a group as large as mmlu stays alone.
    groups = {"group_subtasks": {"grp": ["sub_1", "sub_0"], "big": many}}
    shown = EvalResults(settings, tasks, groups, requested=["grp", "big"]).shown_tasks()
    assert shown == ["grp", "sub_1", "sub_0", "big"]
    # A tag (no entry of its own in lm-eval's results) shows every task.
    assert "sub_0" in EvalResults(settings, tasks, requested=["a_tag"]).markdown()
