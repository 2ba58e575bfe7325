"""Loader workers that are never forked from a training process running threads: `start_worker_server`.

By the time a training process starts its loader workers it runs threads (gloo's, the loader's queue feeders),
and a child forked beside a running thread inherits whatever that thread held at the instant of the fork. Rarely
the child then waits for ever inside ``os.fork``: the worker never starts, its rank waits for the first batch,
every other rank waits in the gradient all-reduce, and the job hangs without a word until its time limit. (Seen
under a real SLURM: a resumed job's worker stuck in ``os.fork``, its rank in the loader, the other rank in
``backward``.)

``ouro fit`` therefore forks, while it is still one thread and has imported everything (`start_worker_server`),
a server process whose only work is to fork loader workers: multiprocessing's ``forkserver`` start method, with
the server forked instead of started as a new interpreter, so a worker starts about as fast as a forked one
(``benchmarks/worker_start.py``) and shares the imported modules' memory. The server ignores SIGTERM and SIGUSR1
as the workers do (SLURM signals every process of a job step), and dies with the training process
(`ouro.child_processes.die_with_parent`), taking its workers with it.

Where this cannot be done (not Linux, Python 3.14 and newer whose ``forkserver`` differs, or a process that
already runs threads) loaders keep the default start method.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from multiprocessing import forkserver, resource_tracker
from multiprocessing.context import BaseContext

from ouro.child_processes import die_with_parent

_context: BaseContext | None = None
#: The process that started the server (a process forked from it later, e.g. a rank of ``ddp_fork``, cannot use it).
_owner: int | None = None
#: Set in the server process (and so in every worker it forks): the server's PID, the workers' parent.
server_pid: int | None = None


def threads_running() -> int:
    """How many threads this process runs, as the kernel counts them (native threads included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def supported() -> bool:
    """Whether this platform and Python let ouro fork the worker server (Linux, Python < 3.14)."""
    return sys.platform.startswith("linux") and sys.version_info < (3, 14)


def start_worker_server() -> BaseContext | None:
    """Fork the server that forks this process's loader workers, once; the multiprocessing context that uses
    it (`worker_context`). None, and nothing started, where it is not `supported` or this process already
    runs other threads (a fork then is the hazard this avoids)."""
    global _context, _owner
    if _context is not None:
        return worker_context()
    if not supported() or threads_running() != 1:
        return None
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None:  # Python's own server already runs here
            return None
        _start_resource_tracker()
        address = _socket_path()
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(address)
            listener.listen()
            alive_r, alive_w = os.pipe()
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # the server
                _serve(listener.fileno(), alive_r, alive_w, parent)
            os.close(alive_r)
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
    _context, _owner = multiprocessing.get_context("forkserver"), os.getpid()
    return _context


def _socket_path() -> str:
    """A path for the server's socket, in a new folder only this user can enter, in the temp dir (under ``ouro
    fit`` the run's scratch folder, whose path is short enough for a socket). Not in multiprocessing's own temp
    folder: that one is removed by a handler at exit, which fails with a traceback once ``ouro fit`` has removed
    the scratch folder around it."""
    folder = tempfile.mkdtemp(prefix="ws-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return os.path.join(folder, "socket")


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the workers report their named semaphores to it) now, while one
    thread runs.

    * The tracker ignores SIGINT and SIGTERM itself, but not SIGUSR1, which SLURM's pre-emption warning sends to
      every process of the job step: SIGUSR1 stays blocked in it (a new process inherits the signal mask; here
      the signal is only held for the moment of the start, then delivered).
    * Once a training process is killed, the tracker removes the semaphores of its loaders' queues and would
      warn about each one as a leak: expected then, and nothing the user can act on, so it does not.
    """
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    sys.warnoptions.append(quiet)  # the tracker is a new interpreter, started with this process's -W options
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        sys.warnoptions.remove(quiet)


def _serve(listener_fd: int, alive_r: int, alive_w: int, parent: int) -> None:
    global server_pid
    code = 1
    try:
        os.close(alive_w)
        die_with_parent(parent)
        server_pid = os.getpid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        # Returns (SystemExit) once every process holding the other end of ``alive_r`` has exited.
        forkserver.main(listener_fd, alive_r, preload=[])
    except SystemExit:
        code = 0
    finally:
        os._exit(code)  # never run the training process's exit handlers here


def worker_context() -> BaseContext | None:
    """The context loaders start their workers with: the worker server's once `start_worker_server` ran in this
    process, else None (the default start method)."""
    return _context if _owner == os.getpid() else None
