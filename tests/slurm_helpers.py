"""Helpers of tests/test_slurm.py that run inside the SLURM jobs (importable through PYTHONPATH)."""

from __future__ import annotations

import faulthandler
import signal
import time

from lightning import Callback

#: The signal on which the job's processes print every thread's stack to the job's log (`Pace` sets it up in
#: each rank, and its loader workers inherit it): what a test that times out sends before it fails.
DUMP_STACKS = signal.SIGUSR2


class Pace(Callback):
    """Sleeps after every training batch, so that a test can signal a job while it trains (a tiny model's step
    takes milliseconds). Changes nothing else."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds
        faulthandler.register(DUMP_STACKS, all_threads=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        time.sleep(self.seconds)
