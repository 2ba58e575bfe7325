"""What every loader worker does first: leave SIGTERM and SIGUSR1 to the training process, and die with it.

SLURM signals every process of a job step, loader workers included. PyTorch's workers die on a SIGTERM that
does not come from their parent, and the training process then fails wherever it happens to be ("DataLoader
worker is killed by signal: Terminated"); a worker that inherited a SIGUSR1 handler runs it (Lightning's tries to
save a checkpoint there and fails). Ignoring both in the worker leaves them to the training process
(`ouro.preemption`), which stops its workers itself.

A training process that dies without stopping its workers (``kill -9``, the kernel's out-of-memory killer) takes
them with it at once (`ouro.child_processes.die_with_parent`; under ``ouro fit`` the workers' parent is the
worker server of `ouro.data.worker_server`, which dies with the training process the same way). Left alone, a
worker that is sending a batch at that moment prints a traceback (multiprocessing's ``resource_sharer`` reports
the reset connection to its dead parent) before PyTorch's watchdog ends it, up to 5 s later. The kernel resets
that connection a moment before it kills the worker, and under load the worker can run in between: a lost
connection is reported only once it is clear the parent still lives (`QuietIfParentDied`).

A training process that ends while workers still run (a failure raised with a loader's iterator alive) would
wait for them for ever: Python's exit sends its daemonic children SIGTERM, which the workers ignore, and then
joins them without a limit. The process that configures the workers therefore stops them at exit itself
(`stop_daemonic_children`), before Python's own handler runs.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from types import TracebackType

from ouro.child_processes import die_with_parent
from ouro.data import worker_server


class LeaveSignalsToMainProcess:
    """A ``worker_init_fn`` that ignores SIGTERM and SIGUSR1, has the worker die with the process that started it
    (Linux), then runs ``then`` (a picklable object, since spawned workers unpickle it)."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then
        _stop_children_at_exit()

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        parent = multiprocessing.parent_process()
        if parent is not None:  # None: called in a process multiprocessing did not start, not in a worker
            # A worker forked by the worker server has the server as its parent, which dies with the training
            # process (`ouro.data.worker_server`).
            parent_pid = worker_server.server_pid or parent.pid
            die_with_parent(parent_pid)
            sys.excepthook = QuietIfParentDied(sys.excepthook, parent_pid)
        if self.then is not None:
            self.then(worker_id)


#: Seconds `stop_daemonic_children` waits for children that take SIGTERM before it kills the rest.
STOP_WAIT_S = 2.0
_stopping_at_exit: list[bool] = []


def _stop_children_at_exit() -> None:
    if not _stopping_at_exit:
        # atexit runs the newest first, so this runs before multiprocessing's handler (registered at its import).
        atexit.register(stop_daemonic_children)
        _stopping_at_exit.append(True)


def stop_daemonic_children() -> None:
    """End this process's daemonic children (loader workers): SIGTERM, then SIGKILL for those still running
    `STOP_WAIT_S` later (ouro's workers ignore SIGTERM). Without children, it does nothing."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()


class QuietIfParentDied:
    """A worker's ``sys.excepthook``: a lost connection (``ConnectionError``, ``EOFError``) is passed on to ``hook``
    only if the parent process (``parent_pid``) is still alive ``wait_s`` seconds later; once the parent is gone
    the connection was to it, and the kernel is killing this worker anyway. Any other exception goes to ``hook``
    at once."""

    def __init__(self, hook: Callable[..., object], parent_pid: int, wait_s: float = 1.0) -> None:
        self.hook, self.parent_pid, self.wait_s = hook, parent_pid, wait_s

    def __call__(
        self, kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if issubclass(kind, (ConnectionError, EOFError)):
            deadline = time.monotonic() + self.wait_s
            while os.getppid() == self.parent_pid and time.monotonic() < deadline:
                time.sleep(0.01)
            if os.getppid() != self.parent_pid:
                return
        self.hook(kind, value, traceback)
