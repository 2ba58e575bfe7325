"""Pre-emption warnings that arrive while ``ouro fit`` starts, before its handlers exist.

SIGUSR1's default action ends the process, and SLURM may send it (``--signal=SIGUSR1@N``, ``scancel
--signal=USR1``) while a job is still importing, building its model or loading its checkpoint. `hold` makes the
process remember it instead; the fit's handlers (`ouro.preemption.PreemptionSignals`) `take` it when they are
installed, so it becomes the checkpoint at the first step boundary, as a later warning would.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_held: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold(signum: int = signal.SIGUSR1) -> Any:
    """Remember ``signum`` instead of dying of it; returns the handler it replaced (for `release`), or None
    outside the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, _remember)


def take() -> list[int]:
    """The signals held since `hold`, each once."""
    taken = list(_held)
    _held.clear()
    return taken


def release(previous: Any, signum: int = signal.SIGUSR1) -> None:
    """Put back the handler `hold` replaced and forget what was held."""
    _held.clear()
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signum, previous)
