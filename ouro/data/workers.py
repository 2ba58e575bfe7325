"""What every loader worker does first: leave SIGTERM and SIGUSR1 to the training process.

SLURM signals every process of a job step, loader workers included. PyTorch's workers die on a SIGTERM that
does not come from their parent, and the training process then fails wherever it happens to be ("DataLoader
worker is killed by signal: Terminated"); a worker that inherited a SIGUSR1 handler runs it (Lightning's tries to
save a checkpoint there and fails). Ignoring both in the worker leaves them to the training process
(`ouro.preemption`), which stops its workers itself; a worker whose parent is gone still exits (PyTorch's
watchdog).
"""

from __future__ import annotations

import signal
from collections.abc import Callable


class LeaveSignalsToMainProcess:
    """A ``worker_init_fn`` that ignores SIGTERM and SIGUSR1, then runs ``then`` (a picklable object, since
    spawned workers unpickle it)."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)
