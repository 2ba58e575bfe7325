"""The quickstart recipe parses, and its model fits the built-in corpus it trains on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ouro.data.builtin import BUILTIN_VOCAB_SIZE

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def test_quickstart_recipe_resolves(capsys):
    from ouro.trainer_cli import run_trainer_cli

    with pytest.raises(SystemExit) as info:
        run_trainer_cli(["fit", "--config", str(RECIPE), "--print_config"])
    assert info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["class_path"] == "ouro.data.PretrainDataModule"
    assert resolved["data"]["init_args"]["sources"] == "builtin"
    model = resolved["model"]["model"]
    assert model["vocab_size"] == BUILTIN_VOCAB_SIZE and model["eos_token_id"] == 0
    assert model["total_ut_steps"] == 4
    assert resolved["data"]["init_args"]["seq_len"] <= model["max_position_embeddings"]
    assert resolved["trainer"]["accelerator"] == "cpu" and resolved["trainer"]["enable_progress_bar"]
