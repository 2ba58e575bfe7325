"""EvalInTraining: the logged keys and values, the token and time budget, resume state, bad settings."""

from __future__ import annotations

import csv
import logging

import lightning as L
import pytest
import torch
from conftest import ToyDataModule
from lightning.pytorch.loggers import CSVLogger

from ouro.callbacks import EvalInTraining
from ouro.config import OuroConfig
from ouro.eval.suite import eval_questions, score_questions
from ouro.module import OptimizerConfig, OuroLM

TOKENS_PER_STEP = 4 * 32  # ToyDataModule: batch 4 x seq 32


def _module() -> OuroLM:
    config = OuroConfig.preset(
        "tiny", vocab_size=4096, hidden_size=32, intermediate_size=64, total_ut_steps=2
    )
    return OuroLM(model=config, optimizer=OptimizerConfig(lr=3e-3))


def _fit(tmp_path, callback: EvalInTraining, steps: int) -> tuple[L.Trainer, OuroLM]:
    torch.manual_seed(0)
    module = _module()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=ToyDataModule(vocab_size=512))
    return trainer, module


def _rows(tmp_path) -> list[dict[str, str]]:
    with open(tmp_path / "metrics.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("eval/seconds")]


def test_logs_every_exit_step_and_q_exit_every_n_tokens_and_at_the_end(tmp_path, builtin_tokenizer):
    callback = EvalInTraining(
        tasks=["ouro_binding_d2", "ouro_arith"], every_tokens=2 * TOKENS_PER_STEP, limit=12, batch_size=5
    )
    trainer, module = _fit(tmp_path, callback, steps=5)
    assert [h["tokens"] for h in callback.history] == [
        2 * TOKENS_PER_STEP,
        4 * TOKENS_PER_STEP,
        5 * TOKENS_PER_STEP,
    ]
    # limit counts questions per task; the arith group spreads its 12 over 6 difficulties (the first of each)
    assert callback.history[-1]["questions"] == {
        "ouro_binding_d2": 12,
        **{f"ouro_arith_d{d}": 2 for d in range(1, 7)},
    }
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4, 5]
    assert [float(r["train/tokens_seen"]) for r in rows] == [h["tokens"] for h in callback.history]
    keys = {k for k, v in rows[-1].items() if v}
    for task in ["ouro_binding_d2", "ouro_arith", "ouro_arith_d1", "ouro_arith_d6"]:
        for key in ["step1", "step2", "q0.5", "q0.5/depth", "q0.9", "q0.9/depth"]:
            assert f"eval/{task}/{key}" in keys, (task, key)
    # The last row holds the final model's scores: the same numbers scored afresh.
    expected = score_questions(module.net, builtin_tokenizer, eval_questions("binding", 2, 12), (0.5, 0.9))
    for key, value in expected.items():
        assert float(rows[-1][f"eval/ouro_binding_d2/{key}"]) == pytest.approx(value)
    per_difficulty = [float(rows[-1][f"eval/ouro_arith_d{d}/step2"]) for d in range(1, 7)]
    assert float(rows[-1]["eval/ouro_arith/step2"]) == pytest.approx(sum(per_difficulty) / 6)
    assert all(1 <= float(rows[-1][f"eval/ouro_arith/q{q}/depth"]) <= 2 for q in ("0.5", "0.9"))
    assert module.training  # evaluation leaves the model as it found it

    from ouro.plot import plot

    written = {p.rsplit("/", 1)[1] for p in plot(str(tmp_path), str(tmp_path / "plots"))}
    assert {"eval_ouro_binding_d2.png", "eval_ouro_arith.png", "eval_ouro_arith_d6.png"} <= written


def test_token_and_time_budgets_cut_questions_and_tasks_and_say_so(tmp_path, caplog, builtin_tokenizer):
    from ouro.eval.suite.score import encode

    tokenizer = builtin_tokenizer
    sizes = [len(encode(tokenizer, q.prompt)) for q in eval_questions("lookup", 1, 10)]
    budget = sum(sizes[:4])  # room for exactly four lookup questions
    callback = EvalInTraining(
        tasks=["ouro_lookup_d1", "ouro_binding_d1"], every_tokens=10**9, limit=10, max_tokens=budget
    )
    with caplog.at_level(logging.INFO):
        _fit(tmp_path / "tokens", callback, steps=1)
    assert callback.history[-1]["cut"] == [
        f"ouro_lookup_d1 (6 of 10 questions, over {budget} tokens)",
        f"ouro_binding_d1 (10 of 10 questions, over {budget} tokens)",
    ]
    metrics = callback.history[-1]["metrics"]
    assert "eval/ouro_lookup_d1/step1" in metrics and "eval/ouro_binding_d1/step1" not in metrics
    assert "cut by the budget: ouro_lookup_d1 (6 of 10 questions" in caplog.text

    slow = EvalInTraining(tasks=["ouro_binding", "ouro_arith_d1"], every_tokens=10**9, max_seconds=1e-9)
    _fit(tmp_path / "time", slow, steps=1)
    cut = slow.history[-1]["cut"]
    # The first difficulty starts before any time has passed; everything after it is cut.
    assert cut == [f"ouro_binding_d{d} (over 1e-09 s)" for d in range(2, 5)] + [
        "ouro_arith_d1 (over 1e-09 s)"
    ]
    assert {k.split("/")[1] for k in slow.history[-1]["metrics"] if k.startswith("eval/ouro")} == {
        "ouro_binding_d1",
        "ouro_binding",
    }


def test_resume_state_and_schedule():
    callback = EvalInTraining(every_tokens=1000)
    callback.load_state_dict({"last_tokens": 2500})
    assert callback.state_dict() == {"last_tokens": 2500}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exit_thresholds": [1.5]}, r"exit_thresholds must lie in \(0, 1\], got 1.5"),
        (
            {"tasks": "ouro_nope"},
            r"unknown built-in task 'ouro_nope'; families are \['arith', 'binding', 'lookup', 'roots'\]",
        ),
        ({"tasks": "ouro_binding_d9"}, r"'ouro_binding_d9' does not exist; binding has difficulties 1..4"),
        ({"every_tokens": 0}, r"every_tokens must be >= 1"),
        ({"max_seconds": 0}, r"max_seconds must be > 0"),
        ({"tasks": []}, r"tasks must name at least one task"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalInTraining(**kwargs)


@pytest.mark.parametrize(
    "overlay, layers, steps",
    [(None, 1, 4), ("one_pass.yaml", 1, 1), ("one_pass_deep.yaml", 4, 1)],
)
def test_demo_arms_differ_only_in_depth(overlay, layers, steps, capsys, monkeypatch):
    """The demonstration's three arms: same data, budget and evaluation; layers x passes = 4, 1 or 4."""
    from tests.test_recipes import ROOT, resolved

    monkeypatch.chdir(ROOT)
    paths = [ROOT / "recipes/demo/looped.yaml"] + ([ROOT / "recipes/demo" / overlay] if overlay else [])
    config = resolved(paths, capsys)
    model = config["model"]["model"]
    assert (model["num_hidden_layers"], model["total_ut_steps"], model["hidden_size"]) == (layers, steps, 64)
    data = config["data"]["init_args"]
    assert (data["sources"], data["shuffle"]) == ("builtin-roots", False)
    assert config["data"]["class_path"] == "ouro.data.SFTDataModule"
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["EvalInTraining"]["tasks"] == ["ouro_roots"]
    # One pass over the curriculum: the training split's blocks of SFT_SEQ_LEN + 1 tokens, two documents each.
    from ouro.eval.suite.training_data import SFT_SEQ_LEN, TRAIN_DOCUMENTS

    assert callbacks["TokenBudget"]["max_tokens"] == TRAIN_DOCUMENTS["roots"] // 2 * (SFT_SEQ_LEN + 1)


def test_demo_pipeline_runs_the_three_arms_in_turn(monkeypatch):
    from ouro.pipeline import load_pipeline
    from tests.test_recipes import ROOT

    monkeypatch.chdir(ROOT)
    stages = load_pipeline("recipes/pipelines/demo.yaml")
    assert [s.name for s in stages] == ["looped", "one_pass", "one_pass_deep"]
