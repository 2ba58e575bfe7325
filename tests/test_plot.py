"""`ouro plot`: charts from a real short run's CSV logs, and clear errors when there is nothing to plot."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from conftest import ToyDataModule, TrainingRecorder
from lightning.pytorch.loggers import CSVLogger

from ouro import OuroConfig
from ouro.callbacks import LoopSchedule, WarmupStableDecay
from ouro.module import OptimizerConfig, OuroLM
from ouro.plot import find_metrics_files, plot, read_metrics, series

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 6-step run in two attempts (the second resumes: logs in version_0 and version_1) with validation."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    recorder = TrainingRecorder()

    def trainer(max_steps: int, callbacks: list) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            default_root_dir=root,
            log_every_n_steps=1,
            logger=CSVLogger(save_dir=root, name="logs"),
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            val_check_interval=3,
            limit_val_batches=1,
            callbacks=callbacks,
        )

    def callbacks() -> list:
        return [
            WarmupStableDecay(total_tokens=6 * 32, warmup_tokens=64, decay_tokens=64),
            LoopSchedule(beta=[[0, 0.1], [96, 0.05]]),
            recorder,
        ]

    data = ToyDataModule(seq_len=16, batch_size=2, train_size=12, val_size=2)
    model = OuroLM(model=OuroConfig.preset("tiny", total_ut_steps=2), optimizer=OptimizerConfig(lr=1e-3))
    first = trainer(3, callbacks())
    first.fit(model, datamodule=data)
    checkpoint = root / "first.ckpt"
    first.save_checkpoint(checkpoint)
    model = OuroLM(model=OuroConfig.preset("tiny", total_ut_steps=2), optimizer=OptimizerConfig(lr=1e-3))
    trainer(6, callbacks()).fit(model, datamodule=data, ckpt_path=str(checkpoint))
    return root, [(step["tokens"], step["lr"]) for step in recorder.steps]


def test_metrics_of_every_attempt_are_read_against_tokens(run_dir):
    root, lr_values = run_dir
    files = find_metrics_files(root)
    assert [f.parent.name for f in files] == ["version_0", "version_1"]
    rows = read_metrics(files)
    tokens, lrs = series(rows, "lr")
    assert tokens == [t for t, _ in lr_values] and lrs == pytest.approx([lr for _, lr in lr_values])
    val_tokens, val_ce = series(rows, "val/ce_step1")
    assert val_tokens == [96.0, 192.0] and len(val_ce) == 2  # validation after steps 3 and 6 (32 tokens each)


def test_plot_writes_the_charts(run_dir, tmp_path, capsys):
    root, _ = run_dir
    written = plot(str(root), out=str(tmp_path / "charts"))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == ["exit_distribution.png", "lr.png", "train_loss_per_step.png", "val_loss_per_step.png"]
    for path in written:
        with open(path, "rb") as handle:
            assert handle.read(8) == PNG
    assert "wrote" in capsys.readouterr().out
    assert plot(str(root))[0].startswith(str(root / "plots"))  # default output folder


def test_plot_command_line(run_dir, tmp_path):
    from ouro.cli import main

    main(["plot", str(run_dir[0]), "--out", str(tmp_path)])
    assert (tmp_path / "lr.png").is_file()


def test_plot_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        plot(str(tmp_path))
    with (tmp_path / "metrics.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["epoch", "step", "val/loss"], [0, 3, 1.5]])
    with pytest.raises(ValueError, match="train/tokens_seen"):
        plot(str(tmp_path))
    assert not (tmp_path / "plots").exists()  # nothing written on error
