"""A stage's run directory: its loggers, checkpoints and resolved config.

Layout of ``trainer.default_root_dir`` (one per stage)::

    config.yaml              the resolved recipe of the latest attempt
    checkpoints/last.ckpt    what a rerun resumes from and what the next stage starts from
    logs/version_N/          CSV metrics (metrics.csv) and the config of attempt N (resumes add a version)
    tensorboard/version_N/   TensorBoard events
    stage_complete.json      written when the stage finished (the pipeline skips such stages)
    .tmp/                    temporary files of the running attempt (removed at its end, emptied at the next start)
    cache/                   torch.compile caches (kept for resumes)
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ouro.atomic import atomic_write_text
from ouro.preflight import COMPILE_CACHES, choose_compile_caches

COMPLETE_MARKER = "stage_complete.json"
#: Temporary files of a run (emptied at each start: a killed run leaves nothing in the system temp dir).
TEMP_DIR = ".tmp"
#: Compiler caches of a run (kept: a resumed run reuses them).
CACHE_DIR = "cache"
#: Longest temp-dir path kept under the run directory: multiprocessing puts Unix sockets (at most 107 bytes of
#: path) at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX.
MAX_SCRATCH_PATH = 75


def default_loggers(root: str | Path) -> list:
    """CSV (always readable by ``ouro plot``) and TensorBoard loggers under the run directory."""
    return [
        CSVLogger(save_dir=str(root), name="logs"),
        TensorBoardLogger(save_dir=str(root), name="tensorboard"),
    ]


def default_checkpoint(root: str | Path, every_n_train_steps: int | None = None) -> ModelCheckpoint:
    """``checkpoints/last.ckpt`` kept up to date (plus step-numbered files when an interval is set).

    A checkpoint saved again under an existing name replaces it (atomically) instead of adding ``-v1`` copies,
    so a run folder holds one ``last.ckpt`` and one file per step.
    """
    return ModelCheckpoint(
        dirpath=str(Path(root) / "checkpoints"),
        filename="step-{step:08d}",
        save_last=True,
        save_top_k=-1 if every_n_train_steps else 0,
        every_n_train_steps=every_n_train_steps,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )


class CheckpointedStepRow(Callback):
    """Keeps the training metrics of a checkpoint's own step in the checkpoint and logs them again on resume.

    Lightning logs a step's row after the step's checkpoints are saved, so a kill in between (in the middle of
    writing ``last.ckpt``, say, with ``step-N.ckpt`` already complete) loses row N for good: the rerun resumes
    after step N. With this row the resumed attempt writes it first, and ``ouro plot`` draws an unbroken series
    (a step that two attempts logged counts once, the later one).
    """

    def __init__(self) -> None:
        self.row: dict[str, Any] = {}
        self._restored: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return "OuroCheckpointedStepRow"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # Runs before the checkpoint callbacks (Lightning puts them last); the metrics hold this step's values.
        values = {}
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/") and (not isinstance(value, torch.Tensor) or value.numel() == 1):
                values[name] = float(value)
        self.row = {"step": trainer.global_step - 1, "metrics": values}  # the step Lightning's loggers record

    def state_dict(self) -> dict[str, Any]:
        return dict(self.row)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        restored, self._restored = self._restored, {}
        if not restored.get("metrics"):
            return
        for logger in trainer.loggers:
            logger.log_metrics(restored["metrics"], step=int(restored["step"]))
            logger.save()


class RunConfigCallback(SaveConfigCallback):
    """Also keep the resolved config at the top of the run directory (overwritten by each attempt)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(Path(trainer.default_root_dir) / "config.yaml", text)


def mark_complete(root: str | Path, info: dict[str, Any]) -> Path:
    """Write ``stage_complete.json`` atomically."""
    record = {**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return atomic_write_text(Path(root) / COMPLETE_MARKER, json.dumps(record, indent=2) + "\n")


def is_complete(root: str | Path) -> bool:
    """Whether the stage of run directory ``root`` finished (its ``stage_complete.json`` exists)."""
    return (Path(root) / COMPLETE_MARKER).is_file()


def use_run_scratch(root: str | Path, rank: int = 0) -> Path:
    """Send this process's temporary files and compiler caches into the run directory.

    ``TMPDIR`` (Python's ``tempfile``, loader workers, litdata, fsspec) becomes ``ROOT/.tmp/<rank>``, emptied
    first, since what a killed run left there goes at the next start, and removed by `release_run_scratch`.
    Where that path is too long for the Unix sockets that multiprocessing puts in the temp dir, a folder named
    after the run in the system temp dir takes its place (emptied and removed the same way). torch.compile's
    caches (inductor, triton) go to ``ROOT/cache`` unless the user chose a place (``TORCHINDUCTOR_CACHE_DIR``,
    ``TRITON_CACHE_DIR``). Child processes inherit the environment. The folders it creates go again at
    `release_run_scratch` while empty: a fit refused before training leaves nothing behind.
    """
    root = Path(root).absolute()
    scratch = root / TEMP_DIR / str(rank)
    if len(str(scratch)) > MAX_SCRATCH_PATH:
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / f"ouro-run-{digest}" / str(rank)
    release_run_scratch()
    shutil.rmtree(scratch, ignore_errors=True)
    created = scratch
    while not created.parent.exists():
        created = created.parent
    scratch.mkdir(parents=True, exist_ok=True)
    names = ("TMPDIR", *COMPILE_CACHES)
    _scratch_state.update(
        scratch=scratch,
        created=created,
        tempdir=tempfile.tempdir,
        env={n: os.environ.get(n) for n in names},
    )
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    choose_compile_caches(root / CACHE_DIR)
    return scratch


#: The scratch folder in use and what `use_run_scratch` replaced (restored by `release_run_scratch`).
_scratch_state: dict[str, Any] = {}


def release_run_scratch() -> None:
    """Remove the run's temporary folder (and ``.tmp`` once no other rank uses it) and restore ``TMPDIR`` and
    the cache variables as they were. Runs at the end of ``ouro fit`` and, as a fallback, at interpreter exit."""
    if not _scratch_state:
        return
    scratch = _scratch_state.pop("scratch")
    tempfile.tempdir = _scratch_state.pop("tempdir")
    for name, value in _scratch_state.pop("env").items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(scratch, ignore_errors=True)
    created = _scratch_state.pop("created")
    # `.tmp` once no other rank uses it, then the folders `use_run_scratch` created while they stay empty: a fit
    # refused before it trained leaves no empty run directory behind.
    parents = scratch.parent.parents
    for folder in [scratch.parent, *(p for p in parents if p == created or created in p.parents)]:
        try:
            folder.rmdir()
        except OSError:
            break


atexit.register(release_run_scratch)
