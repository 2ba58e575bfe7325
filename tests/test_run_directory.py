"""What a run writes lives under its run directory: its temp dir (emptied at the start, the system's restored
after), torch.compile's caches (unless the user chose them), and every path of the quickstart recipe."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lightning import LightningDataModule

from ouro.module import OuroLM
from ouro.preflight import CACHES_CHOSEN_BY_OURO, choose_compile_caches, hold_compile_caches
from ouro.recipe_yaml import configure_parsing
from ouro.run_dir import RunConfigCallback, release_run_scratch, use_run_scratch
from ouro.trainer_cli import OuroCLI

ROOT = Path(__file__).parent.parent


def test_run_scratch_lives_in_the_run_and_is_emptied_and_restored(tmp_path, short_tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    before = tempfile.gettempdir()
    root = short_tmp_path / "r"
    stale = root / ".tmp" / "0" / "pymp-left-by-kill-9"
    stale.mkdir(parents=True)
    scratch = use_run_scratch(root)
    try:
        assert scratch == root.absolute() / ".tmp" / "0" and not stale.exists()
        assert tempfile.gettempdir() == str(scratch) and os.environ["TMPDIR"] == str(scratch)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root.absolute() / "cache" / "torchinductor")
    finally:
        release_run_scratch()
    assert tempfile.gettempdir() == before and not (root / ".tmp").exists()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ

    deep = tmp_path / ("d" * 80)
    scratch = use_run_scratch(deep)
    try:
        assert scratch.parent.parent == Path(before) and len(str(scratch)) < len(str(deep))
    finally:
        release_run_scratch()
    assert not scratch.parent.exists()


def test_compile_caches_go_under_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHES_CHOSEN_BY_OURO, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/mine")
    hold_compile_caches()
    choose_compile_caches(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/mine", "the user's choice wins"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    hold_compile_caches()  # while the arguments are read: a folder that exists, so importing torch creates none
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == tempfile.gettempdir()
    monkeypatch.chdir(tmp_path)
    use_run_scratch("runs/a")  # the recipe is read: the run's own cache
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "runs" / "a" / "cache" / "torchinductor")
    release_run_scratch()
    use_run_scratch("runs/c")  # a pipeline's next stage
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "runs" / "c" / "cache" / "triton")
    release_run_scratch()
    assert not (tmp_path / "runs").exists(), "nothing was written: the folders it created are gone"


def test_quickstart_paths_follow_the_run_directory(tmp_path):
    """Every path of the quickstart recipe derives from trainer.default_root_dir (no hard-coded runs/quickstart),
    so a rerun with another run directory resumes there and --checkpoint_every_n_steps applies."""
    configure_parsing()
    run = tmp_path / "elsewhere"
    args = ["--config", str(ROOT / "recipes" / "quickstart.yaml"), "--trainer.default_root_dir", str(run)]
    try:
        cli = OuroCLI(
            OuroLM,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            auto_configure_optimizers=False,
            run=False,
            args=[*args, "--checkpoint_every_n_steps", "7"],
        )
    finally:
        release_run_scratch()
    trainer = cli.trainer
    assert Path(trainer.checkpoint_callback.dirpath) == run / "checkpoints"
    assert trainer.checkpoint_callback._every_n_train_steps == 7
    assert {Path(logger.save_dir) for logger in trainer.loggers} == {run}
    assert (ROOT / "recipes" / "quickstart.yaml").read_text().count("runs/quickstart") == 1  # the default
