"""The `ouro` command: LightningCLI recipes, run directories, resume, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
ROOT = TESTS.parent

RECIPE = """\
trainer:
  accelerator: cpu
  max_steps: {steps}
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  val_check_interval: 3
  check_val_every_n_epoch: null
  limit_val_batches: 1
  num_sanity_val_steps: 0
model:
  model:
    vocab_size: 512
    hidden_size: 64
    intermediate_size: 172
    num_hidden_layers: 2
    num_attention_heads: 4
    num_key_value_heads: 4
    total_ut_steps: 2
  entropy_coef: 0.05
data:
  class_path: toy_data.ToyDataModule
  init_args:
    seq_len: 16
    batch_size: 2
"""


def ouro(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "ouro.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_subcommand(tmp_path):
    result = ouro("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in (
        "fit",
        "validate",
        "test",
        "predict",
        "prepare",
        "export",
        "push",
        "generate",
        "pipeline",
        "plot",
    ):
        assert command in result.stdout


def test_fit_writes_run_dir_and_rerun_resumes(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=3, root="runs/toy"))
    first = ouro("fit", "--config", "r.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "toy"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "logs").glob("version_*/metrics.csv"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["ouro"]["tokens_seen"] == 3 * 2 * 16

    # Same recipe, larger budget: resumes from last.ckpt instead of failing on the existing config.yaml.
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=5, root="runs/toy"))
    second = ouro("fit", "--config", "r.yaml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["ouro"]["tokens_seen"] == 5 * 2 * 16


def test_config_composition_last_wins_and_print_config(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=3, root="runs/toy"))
    (tmp_path / "more.yaml").write_text("model:\n  model:\n    total_ut_steps: 3\n  entropy_coef: 0.1\n")
    result = ouro(
        "fit",
        "--config",
        "r.yaml",
        "--config",
        "more.yaml",
        "--model.entropy_coef",
        "0.2",
        "--print_config",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "total_ut_steps: 3" in result.stdout and "entropy_coef: 0.2" in result.stdout


@pytest.mark.parametrize(
    "override, field",
    [
        (["--model.model.num_attention_heads", "5"], "num_attention_heads"),
        (["--model.model.total_ut_steps", "0"], "total_ut_steps"),
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--model.entropy_coef", "abc"], "entropy_coef"),
    ],
)
def test_bad_recipes_fail_before_training_naming_the_field(tmp_path, override, field):
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=3, root="runs/bad"))
    result = ouro("fit", "--config", "r.yaml", *override, cwd=tmp_path)
    assert result.returncode != 0
    assert field in result.stderr
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def test_missing_init_from_is_a_clear_error(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "warmup.yaml").write_text(RECIPE.format(steps=3, root="runs/warmup"))
    (tmp_path / "stable.yaml").write_text(RECIPE.format(steps=3, root="runs/stable") + "  \n")
    result = ouro("fit", "--config", "stable.yaml", "--model.init_from", "runs/warmup", cwd=tmp_path)
    assert result.returncode == 2
    assert "recipes/warmup.yaml" in result.stderr and "Traceback" not in result.stderr


def _attribute_docstrings(cls) -> dict[str, str]:
    """field -> docstring written under it in the class body (read from the source, independently of
    jsonargparse)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _help(args: list[str], capsys) -> str:
    from ouro.trainer_cli import run_trainer_cli

    with pytest.raises(SystemExit) as stop:
        run_trainer_cli(args)
    assert stop.value.code in (0, None)
    return " ".join(capsys.readouterr().out.split())


def test_fit_help_shows_every_model_and_optimizer_field_docstring(capsys):
    import dataclasses

    from ouro.config import OuroConfig
    from ouro.module import OptimizerConfig

    text = _help(["fit", "--help"], capsys)
    for prefix, cls in (("model.model", OuroConfig), ("model.optimizer", OptimizerConfig)):
        docs = _attribute_docstrings(cls)
        assert len(docs) == len(dataclasses.fields(cls))
        for name, doc in docs.items():
            option = f"--{prefix}.{name} "
            own_help = text[text.rindex(option) :].split("(type:", 1)[0]  # the last mention: its help entry
            assert doc in own_help, (option, doc)
    assert "Width of the residual stream. (type: int, default: 2048)" in text
    assert "Peak learning rate." in text


def test_data_help_shows_the_datamodule_arguments(capsys):
    import inspect
    import re

    from ouro.data import PretrainDataModule

    doc = inspect.getdoc(PretrainDataModule.__init__)
    text = _help(["fit", "--data.help", "ouro.data.PretrainDataModule"], capsys)
    for name in ("seq_len", "batch_size", "num_workers"):
        first_sentence = re.search(rf"^\s*{name}: ([^.]*\.)", doc, re.M).group(1)
        assert f"--data.{name}" in text and " ".join(first_sentence.split()) in text


@pytest.mark.parametrize(
    ("args", "help_text"),
    [
        (["fit", "--help"], True),
        (["fit", "-h"], True),
        (["fit", "--data.help", "ouro.data.PretrainDataModule"], True),
        (["fit", "--print_config=comments"], True),
        (["fit", "--print_config", "comments"], True),
        (["fit", "--config", "recipes/stable.yaml", "--print_config"], False),
        (["fit", "--config", "help.yaml", "--trainer.max_steps", "2"], False),
    ],
)
def test_field_docstrings_are_read_only_for_help_text(args, help_text):
    from ouro.recipe_yaml import wants_help_text

    assert wants_help_text(args) is help_text
