"""A stage's run directory: its loggers, checkpoints and resolved config.

Layout of ``trainer.default_root_dir`` (one per stage)::

    config.yaml              the resolved recipe of the latest attempt
    checkpoints/last.ckpt    what a rerun resumes from and what the next stage starts from
    logs/version_N/          CSV metrics (metrics.csv) and the config of attempt N (resumes add a version)
    tensorboard/version_N/   TensorBoard events
    stage_complete.json      written when the stage finished (the pipeline skips such stages)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

COMPLETE_MARKER = "stage_complete.json"


def default_loggers(root: str | Path) -> list:
    """CSV (always readable by ``ouro plot``) and TensorBoard loggers under the run directory."""
    return [
        CSVLogger(save_dir=str(root), name="logs"),
        TensorBoardLogger(save_dir=str(root), name="tensorboard"),
    ]


def default_checkpoint(root: str | Path, every_n_train_steps: int | None = None) -> ModelCheckpoint:
    """``checkpoints/last.ckpt`` kept up to date (plus step-numbered files when an interval is set)."""
    return ModelCheckpoint(
        dirpath=str(Path(root) / "checkpoints"),
        filename="step-{step:08d}",
        save_last=True,
        save_top_k=-1 if every_n_train_steps else 0,
        every_n_train_steps=every_n_train_steps,
        auto_insert_metric_name=False,
    )


class FinalCheckpoint(Callback):
    """Save ``checkpoints/last.ckpt`` when training ends normally, so the next stage always finds the end state."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        if any(getattr(callback, "completed", False) for callback in trainer.callbacks):
            return  # TokenBudget already saved the final state
        trainer.save_checkpoint(
            Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", weights_only=False
        )


class RunConfigCallback(SaveConfigCallback):
    """Also keep the resolved config at the top of the run directory (overwritten by each attempt)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(root / "config.yaml"), skip_none=False, overwrite=True)


def mark_complete(root: str | Path, info: dict[str, Any]) -> Path:
    """Write ``stage_complete.json`` atomically."""
    path = Path(root) / COMPLETE_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    tmp.replace(path)
    return path


def is_complete(root: str | Path) -> bool:
    return (Path(root) / COMPLETE_MARKER).is_file()
