"""What every loader worker does first: leave SIGTERM and SIGUSR1 to the training process, and die with it.

SLURM signals every process of a job step, loader workers included. PyTorch's workers die on a SIGTERM that
does not come from their parent, and the training process then fails wherever it happens to be ("DataLoader
worker is killed by signal: Terminated"); a worker that inherited a SIGUSR1 handler runs it (Lightning's tries to
save a checkpoint there and fails). Ignoring both in the worker leaves them to the training process
(`ouro.preemption`), which stops its workers itself.

A training process that dies without stopping its workers (``kill -9``, the kernel's out-of-memory killer) takes
them with it at once (`ouro.child_processes.die_with_parent`). Left alone, a worker that is sending a batch at
that moment prints a traceback (multiprocessing's ``resource_sharer`` reports the reset connection to its dead
parent) before PyTorch's watchdog ends it, up to 5 s later.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable

from ouro.child_processes import die_with_parent


class LeaveSignalsToMainProcess:
    """A ``worker_init_fn`` that ignores SIGTERM and SIGUSR1, has the worker die with the process that started it
    (Linux), then runs ``then`` (a picklable object, since spawned workers unpickle it)."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        parent = multiprocessing.parent_process()
        if parent is not None:  # None: called in a process multiprocessing did not start, not in a worker
            die_with_parent(parent.pid)
        if self.then is not None:
            self.then(worker_id)
