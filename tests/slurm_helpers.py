"""Helpers of tests/test_slurm.py that run inside the SLURM jobs (importable through PYTHONPATH)."""

from __future__ import annotations

import time

from lightning import Callback


class Pace(Callback):
    """Sleeps after every training batch, so that a test can signal a job while it trains (a tiny model's step
    takes milliseconds). Changes nothing else."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        time.sleep(self.seconds)
