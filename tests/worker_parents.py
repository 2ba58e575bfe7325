"""Loader workers and their parents, read from /proc: `parent_pid` (also for tests/test_slurm.py), and a callback for
tests/test_fork_safety.py that runs inside ``ouro fit`` (importable through PYTHONPATH)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from lightning import Callback


def parent_pid(pid: int) -> int:
    """The PID of the parent of process ``pid`` (Linux's /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class RecordWorkerParents(Callback):
    """After the first training batch, writes to ``path`` this process's PID and, for each of its loader workers,
    its parent's PID and that parent's thread count."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx != 0:
            return
        workers = [child.pid for child in multiprocessing.active_children() if child.daemon]
        record = {
            "training_process": os.getpid(),
            "worker_parents": [parent_pid(pid) for pid in workers],
            "worker_parent_threads": [_threads(parent_pid(pid)) for pid in workers],
        }
        Path(self.path).write_text(json.dumps(record))
