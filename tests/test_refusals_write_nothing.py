"""A refused command writes nothing: argument and config errors come before any folder is created (importing
torch creates torch.compile's cache folder at once, so where it points matters before the arguments are read)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

RECIPE = """\
trainer:
  accelerator: cpu
  max_steps: 1
model:
  model:
    vocab_size: 512
    hidden_size: 32
    intermediate_size: 64
    num_hidden_layers: 1
    num_attention_heads: 2
    num_key_value_heads: 2
    max_position_embeddings: 8
data:
  class_path: toy_data.ToyDataModule
  init_args:
    seq_len: 16
    batch_size: 2
"""


def _everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--bogus", "1"],  # a mistyped option
        ["fit"],  # no --config
        [
            "fit",
            "--config",
            "recipe.yaml",
            "--trainer.default_root_dir",
            "runs/x",
        ],  # seq_len past the positions
    ],
    ids=["mistyped-option", "no-config", "config-error"],
)
def test_a_refused_command_creates_no_folder(tmp_path, args):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "recipe.yaml").write_text(RECIPE)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "OURO_COMPILE_CACHES_DEFAULTED")
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        OURO_CACHE=str(home / "ouro-cache"),
        MPLCONFIGDIR=str(
            tmp_path / "matplotlib"
        ),  # matplotlib's own cache, made on its first import anywhere
        PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    before = _everything(work), _everything(home)
    done = subprocess.run(
        [sys.executable, "-c", "from ouro.cli import main; main()", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    after = _everything(work), _everything(home)
    assert after == before, (after, done.stderr[-1000:])
