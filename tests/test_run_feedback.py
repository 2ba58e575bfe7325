"""What a run tells its user: the progress bar's units, TokenBudget against max_steps, silenced library noise."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import pytest
from toy_data import ToyDataModule

from ouro.callbacks import StageProgress, TokenBudget
from ouro.config import OuroConfig
from ouro.module import OuroLM

SEQ, BATCH = 16, 2
TOKENS_PER_STEP = SEQ * BATCH


def tiny_fit(root, callbacks, max_steps, progress=None):
    module = OuroLM(
        model=OuroConfig.preset(
            "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1, total_ut_steps=2
        )
    )
    module.stage.name = "warmup"
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress is not None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, *([progress] if progress else [])],
    )
    trainer.fit(module, datamodule=ToyDataModule(seq_len=SEQ, batch_size=BATCH, vocab_size=512))
    return trainer, module


def test_progress_counts_the_budget_tokens(tmp_path):
    progress = StageProgress()
    trainer, module = tiny_fit(tmp_path, [TokenBudget(max_tokens=4 * TOKENS_PER_STEP)], -1, progress)
    bar = progress.train_progress_bar
    assert (bar.total, bar.unit) == (4 * TOKENS_PER_STEP, "tok")
    assert bar.n == module.tokens_seen == 4 * TOKENS_PER_STEP and trainer.global_step == 4
    assert progress.description(trainer, module) == "warmup"
    assert "Epoch" not in str(bar)


def test_progress_counts_steps_without_a_budget(tmp_path):
    progress = StageProgress()
    trainer, module = tiny_fit(tmp_path, [], 3, progress)
    bar = progress.train_progress_bar
    assert (bar.total, bar.n, bar.unit) == (3, 3, "step")


def test_budget_and_max_steps_both_said_at_start_and_max_steps_ending_first_is_said(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    budget = TokenBudget(max_tokens=100 * TOKENS_PER_STEP)
    trainer, module = tiny_fit(tmp_path, [budget], 2)
    text = caplog.text
    assert f"ends at {100 * TOKENS_PER_STEP:,} tokens, or at trainer.max_steps=2" in text
    assert f"max_steps=2 stopped the stage at {2 * TOKENS_PER_STEP:,} of {100 * TOKENS_PER_STEP:,}" in text
    assert not budget.completed and not (tmp_path / "stage_complete.json").exists()


def test_budget_alone_says_nothing_about_max_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    budget = TokenBudget(max_tokens=2 * TOKENS_PER_STEP)
    tiny_fit(tmp_path, [budget], -1)
    assert "max_steps" not in caplog.text and budget.completed


def test_harmless_library_warnings_are_filtered_and_others_still_show(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from ouro.library_warnings import HARMLESS_WARNINGS, LITLOGGER_TIP, filter_harmless_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_harmless_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn(
            "Your `IterableDataset` has `__len__` defined. In combination ...", UserWarning, stacklevel=1
        )
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]
    assert len(HARMLESS_WARNINGS) == 2 and all(why for *_, why in HARMLESS_WARNINGS)
    caplog.set_level(logging.INFO)
    rank_zero_info(LITLOGGER_TIP + " try installing litlogger")
    rank_zero_info("GPU available: False")
    assert LITLOGGER_TIP not in caplog.text and "GPU available" in caplog.text


@pytest.mark.parametrize("enable", [True, False])
def test_ouro_fit_adds_the_stage_progress_bar(tmp_path, monkeypatch, capsys, enable):
    import yaml

    from ouro.trainer_cli import run_trainer_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "trainer": {"default_root_dir": str(tmp_path / "run"), "enable_progress_bar": enable},
                "model": {"model": {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1}},
                "data": {"class_path": "toy_data.ToyDataModule"},
            }
        )
    )
    cli = run_trainer_cli(["fit", "--config", str(recipe), "--trainer.max_steps", "0"])
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StageProgress)]
    assert len(bars) == (1 if enable else 0)
