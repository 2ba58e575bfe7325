"""Sequences longer than the model's positions are refused before anything runs, saying what to change: a
training sequence (``data.seq_len``, ``LongContextSchedule.seq_len``) and a generation (prompt plus
``max_new_tokens``)."""

from __future__ import annotations

import pytest
from conftest import build_tiny_model

from ouro.callbacks import LongContextSchedule
from ouro.data.base import OuroDataModule
from ouro.generation.generate import generate
from ouro.recipe_yaml import RecipeError
from ouro.trainer_cli import check_sequence_fits


def test_sequence_longer_than_the_positions_is_refused():
    class Data(OuroDataModule):
        seq_len = 128

    check_sequence_fits(128, Data(), [])
    with pytest.raises(
        RecipeError, match=r"data\.seq_len is 128 but model\.model\.max_position_embeddings is 64"
    ):
        check_sequence_fits(64, Data(), [])
    with pytest.raises(RecipeError, match=r"LongContextSchedule\.seq_len is 512"):
        check_sequence_fits(256, Data(), [LongContextSchedule(seq_len=512)])


def test_generation_past_the_positions_is_refused():
    model = build_tiny_model(max_position_embeddings=16)
    assert len(generate(model, list(range(1, 11)), max_new_tokens=6).tokens[0]) <= 6  # 10 + 6 fit exactly
    with pytest.raises(
        ValueError,
        match=r"prompt \(10 tokens\) plus max_new_tokens \(7\) needs 17 positions .* 16; "
        r"lower max_new_tokens to 6",
    ):
        generate(model, list(range(1, 11)), max_new_tokens=7)
    with pytest.raises(ValueError, match="shorten the prompt"):
        generate(model, list(range(1, 17)), max_new_tokens=1)
