"""One run directory, one job: ``ouro fit`` holds ``<run dir>/run.lock`` while it trains.

The lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFS v3+)
by the job's global rank 0, naming the host, the PID (with its start time, against PID reuse) and the SLURM job.
A second ``ouro fit`` on the same directory, such as a requeued job racing a manual rerun, refuses with one line
naming the holder. A lock whose holder is gone is taken over, with one line saying so. A holder is gone when:

* it ran on this host and its PID is no longer that process;
* it was an earlier run of this same SLURM job (a requeued job restarts only after the old one has ended);
* it was another SLURM job that ``squeue`` no longer shows running.

A holder on another host that none of these can judge is taken as alive: the line says which file to delete
once that process is known to be gone.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ouro.errors import RunInUseError

LOCK_NAME = "run.lock"
#: SLURM job states in which a job's processes may still be running.
ACTIVE_SLURM_STATES = {
    "RUNNING",
    "COMPLETING",
    "CONFIGURING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}


#: Variables in which launchers give a process its place: torchrun (RANK, GROUP_RANK, LOCAL_RANK), SLURM
#: (SLURM_PROCID), Lightning's own launcher (NODE_RANK, LOCAL_RANK).
LAUNCH_RANKS = ("RANK", "GROUP_RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def is_first_process() -> bool:
    """Whether this process will be global rank 0 of its job (it takes the lock), judged from what the launcher
    set before the process group exists: every rank variable unset or 0. Lightning's ``rank_zero_only.rank``
    says 0 on every node's first process under its own multi-node launcher."""
    return all(os.environ.get(name, "0") == "0" for name in LAUNCH_RANKS)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the command name


@dataclass
class Holder:
    """Who holds a run directory."""

    host: str
    pid: int
    started: str
    process_start: str | None = None
    slurm_job: str | None = None

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            process_start=_process_start(os.getpid()),
            slurm_job=os.environ.get("SLURM_JOB_ID"),
        )

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"host {self.host}, PID {self.pid}{job}, since {self.started}"


def _read(path: Path) -> Holder | None:
    try:
        record = json.loads(path.read_text())
        return Holder(**{k: record.get(k) for k in Holder.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def _slurm_job_active(job: str) -> bool | None:
    """Whether SLURM shows ``job`` in a state with running processes; None when SLURM cannot be asked."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return False if "Invalid job id" in result.stderr else None
    return result.stdout.strip() in ACTIVE_SLURM_STATES


def holder_is_gone(holder: Holder, me: Holder) -> bool:
    """Whether the process that wrote ``holder`` has certainly ended (see the module docstring)."""
    if holder.host == me.host:
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        start = _process_start(holder.pid)
        return holder.process_start is not None and start is not None and start != holder.process_start
    if holder.slurm_job and holder.slurm_job == me.slurm_job:
        return True
    if holder.slurm_job:
        return _slurm_job_active(holder.slurm_job) is False
    return False


class RunLock:
    """The lock on one run directory, held by this process (`acquire`, `release`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.holder = Holder.this_process()
        self.held = False
        self._created: Path | None = None  # the topmost folder `acquire` created

    def acquire(self) -> None:
        """Take the lock; raise `RunInUseError` if a live process holds it, take it over if its holder is gone."""
        self._created = self.root.absolute()
        while not self._created.parent.exists():
            self._created = self._created.parent
        self._created = None if self._created.exists() else self._created
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._judge_existing()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(asdict(self.holder)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            _held.append(self)
            return
        raise RunInUseError(f"{self.root}: could not take {self.path} (other processes keep taking it)")

    def _judge_existing(self) -> None:
        holder = _read(self.path)
        if holder is None:  # being written this instant, or damaged: give a writer a moment
            time.sleep(0.5)
            holder = _read(self.path)
        if holder is not None and not holder_is_gone(holder, self.holder):
            raise RunInUseError(
                f"{self.root} is in use by another `ouro fit` ({holder.describe()}); wait for it to end or "
                f"use another --trainer.default_root_dir (if that process is gone, delete {self.path})"
            )
        stale = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, stale)  # of two processes taking over, one renames it, the other retries
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)
        what = holder.describe() if holder is not None else "unreadable"
        print(f"ouro: took over the lock of {self.root} left by a job that is gone ({what})", file=sys.stderr)

    def release(self) -> None:
        """Remove the lock if this process still holds it, and the folders `acquire` created while they are still
        empty (a fit refused before it trained leaves nothing behind)."""
        if not self.held:
            return
        self.held = False
        _held.remove(self)
        current = _read(self.path)
        if current is not None and current.pid == self.holder.pid and current.host == self.holder.host:
            self.path.unlink(missing_ok=True)
        if self._created is None:
            return
        root = self.root.absolute()
        for folder in [root, *(p for p in root.parents if self._created in (p, *p.parents))]:
            try:
                folder.rmdir()
            except OSError:
                return


#: Locks this process holds (released by `release_run_locks` at the end of ``ouro fit``, or at exit).
_held: list[RunLock] = []


def release_run_locks() -> None:
    """Release every run-directory lock this process holds."""
    for lock in list(_held):
        lock.release()


atexit.register(release_run_locks)
