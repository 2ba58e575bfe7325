"""A resume with data settings other than the checkpoint's (the data-loader position would be wrong) is refused
with one line naming the value and the way out; another checkpoint interval is no such change."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import fit_args, fit_in_process, load_checkpoint, write_recipe

from ouro.cli import main
from ouro.errors import ResumeError
from ouro.resume import check_resume_settings


def test_resume_with_changed_data_settings_names_the_value(tmp_path):
    checkpoint = {"callbacks": {"OuroResumeSettings": {"seq_len": 16, "batch_size": 2, "num_workers": 1}}}
    check_resume_settings(checkpoint, {"seq_len": 16, "batch_size": 2}, Path("last.ckpt"), tmp_path)
    with pytest.raises(ResumeError) as raised:
        check_resume_settings(checkpoint, {"seq_len": 32, "batch_size": 2}, Path("last.ckpt"), tmp_path)
    message = str(raised.value)
    assert "data.seq_len is 32 but last.ckpt was trained with 16" in message and "batch_size" not in message
    assert "keep the old value" in message and f"--model.init_from {tmp_path}" in message


def test_resume_with_another_batch_size_is_refused_by_ouro_fit(tmp_path, capsys):
    recipe, run = write_recipe(tmp_path, 1), tmp_path / "run"
    fit_in_process(*fit_args(recipe, run))
    with pytest.raises(SystemExit) as exited:
        main(fit_args(write_recipe(tmp_path, 2), run, "--data.init_args.batch_size", "3"))
    assert exited.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"ouro: error: cannot resume {run}: data.batch_size is 3 but last.ckpt was trained with 2. The data-loader "
        "position only resumes with the same values: keep the old value(s), or start a new stage in another run "
        f"directory with --model.init_from {run}"
    )
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 1
    # Resumed with another checkpoint interval (a new ModelCheckpoint state): one last.ckpt, no last-v1.ckpt.
    fit_in_process(*fit_args(write_recipe(tmp_path, 2), run, "--checkpoint_every_n_steps", "1"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-00000002.ckpt"]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
