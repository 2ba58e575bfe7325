"""Child processes that cannot outlive their parent: `die_with_parent`.

A process that ouro starts (a pipeline stage, a tokenizing worker of ``ouro prepare``, a data-loader worker) asks
the kernel to send it SIGKILL when its parent dies (Linux's ``PR_SET_PDEATHSIG``). Even ``kill -9`` of the parent
then takes the child with it at once: it neither goes on alone nor, a moment later, prints a traceback about the
lost parent. Elsewhere than on Linux nothing changes.

The kernel sends the signal when the *thread* that started the child exits, so the child must be started by a
thread that lives as long as the parent process needs it (the main thread, in ouro).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Run in a child process: on Linux the kernel sends it SIGKILL when its parent dies. A child whose parent
    (``parent_pid``) is already gone exits at once (status 1), since the kernel would not signal it any more."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
