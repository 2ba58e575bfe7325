"""Pre-emption and cancellation: a signal becomes a flag, the flag a checkpoint at a step boundary all ranks agree on.

SLURM warns a job before its time limit or a pre-emption with ``--signal=SIGUSR1@N`` (or ``scancel
--signal=USR1``) and ends it with SIGTERM, then SIGKILL. Lightning's own handlers act inside the signal handler:
they save a checkpoint there (in the middle of a step, and under FSDP on one rank while the others sit in a
collective), and every process that inherited them, DataLoader workers included, runs them. Here:

* A warning that arrives while ``ouro fit`` starts, before these handlers exist, is held (`ouro.early_signals`)
  and handed to them, instead of ending the process (SIGUSR1's default action).
* `PreemptionSignals` replaces Lightning's signal connector. Its handlers only set flags, and only in the process
  that installed them: loader workers, forked from it, inherit handlers that do nothing, so they leave SIGUSR1 and
  SIGTERM to the main process.
* `PreemptionCheckpoint` reads the SIGUSR1 flag after each optimizer step and agrees on it across ranks (one
  all-reduce of a boolean per step): every rank saves ``checkpoints/last.ckpt`` at the same step boundary, which
  is what a rerun resumes from; under SLURM rank 0 then requeues the job; and every rank stops with `Preempted`.
* SIGTERM (``scancel``, a time limit reached without a warning) sets Lightning's ``received_sigterm``: Lightning
  broadcasts rank 0's flag at the start of each batch and stops every rank there with ``SIGTERMException``. Nothing
  is saved (SLURM kills the job ``KillWait`` seconds later); the rerun resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ouro import early_signals
from ouro.errors import ResumeError
from ouro.resume import newest_readable_checkpoint

#: Exit status of an ``ouro fit`` stopped by a pre-emption warning after saving (EX_TEMPFAIL: retry later).
EXIT_PREEMPTED = 75
#: Exit status of an ``ouro fit`` stopped by SIGTERM (128 + 15, what the signal itself would give).
EXIT_TERMINATED = 128 + signal.SIGTERM


class Preempted(Exception):
    """Raised on every rank once the pre-emption checkpoint is written (and the job requeued)."""

    def __init__(self, signal_name: str, step: int, path: Path, requeued: str | None) -> None:
        self.signal_name, self.step, self.path, self.requeued = signal_name, step, path, requeued
        where = f"; requeued SLURM job {requeued}, which resumes from it" if requeued else "; rerun to resume"
        super().__init__(f"pre-empted ({signal_name}): saved step {step} to {path}{where}")


def slurm_environment(trainer: Trainer) -> SLURMEnvironment | None:
    """The trainer's SLURM cluster environment, if it runs under SLURM."""
    environment = trainer._accelerator_connector.cluster_environment
    return environment if isinstance(environment, SLURMEnvironment) else None


def warning_signal(trainer: Trainer) -> signal.Signals:
    """The signal that announces a pre-emption: the SLURM environment's ``requeue_signal``, else SIGUSR1."""
    environment = slurm_environment(trainer)
    if environment is not None and environment.requeue_signal is not None:
        return signal.Signals(environment.requeue_signal)
    return signal.SIGUSR1


class PreemptionSignals(_SignalConnector):
    """Lightning's signal connector with handlers that only set flags, in the installing process only.

    Lightning has no public hook for its signal handling; ``ouro fit`` puts this object in place of
    ``trainer._signal_connector``. ``on_warning(signum)`` is called for the pre-emption warning signal.
    """

    def __init__(self, trainer: Trainer, on_warning: Callable[[int], None]) -> None:
        super().__init__(trainer)
        self.on_warning = on_warning

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self._original_handlers = self._get_current_signal_handlers()
        owner = os.getpid()

        def warned(signum: int, frame: FrameType | None) -> None:
            if os.getpid() == owner:  # a forked loader worker leaves it to the main process
                self.on_warning(signum)

        def terminated(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != owner:
                return
            launcher = self.trainer.strategy.launcher
            if launcher is not None and not self.received_sigterm:
                launcher.kill(signum)  # processes this one started (Lightning's own launcher) stop too
            self.received_sigterm = True

        warning = warning_signal(self.trainer)
        self._register_signal(warning, warned)
        self._register_signal(signal.SIGTERM, terminated)
        if warning in early_signals.take():  # the warning came while the process was starting
            self.on_warning(warning)


class PreemptionCheckpoint(Callback):
    """Turns the pre-emption warning into a checkpoint at the next optimizer step all ranks agree on, requeues
    the SLURM job, and stops every rank with `Preempted` (see the module docstring)."""

    def __init__(self, requeue: bool = True) -> None:
        """
        Args:
            requeue: Under SLURM (with Lightning's ``auto_requeue``), have rank 0 run ``scontrol requeue`` once
                the checkpoint is on disk.
        """
        self.requeue = requeue
        self.requested: int | None = None
        self._step_before: int | None = None

    def request(self, signum: int) -> None:
        """Called from the signal handler: remember the signal, nothing else."""
        self.requested = signum

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_before is None or trainer.global_step == self._step_before:
            return  # inside a gradient accumulation: not a step boundary
        # Every rank takes part in this reduction at every step, so a rank that got the signal first never
        # enters the checkpoint's collectives alone.
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            return
        name = signal.Signals(self.requested).name if self.requested is not None else "another rank's signal"
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # ends with a barrier: every rank has finished
        requeued = None
        environment = slurm_environment(trainer)
        if self.requeue and environment is not None and environment.auto_requeue:
            if trainer.is_global_zero:
                requeued = requeue_slurm_job()
            requeued = trainer.strategy.broadcast(requeued)
        raise Preempted(name, trainer.global_step, path, requeued)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Note on the exception the one line ``ouro fit`` prints for it (`stop_line`)."""
        line = stop_line(exception, trainer.global_step, trainer.default_root_dir)
        if line is not None:
            exception.add_note(line)


#: What gloo says when a peer process is gone (NCCL raises ``torch.distributed.DistError`` subclasses).
LOST_PEER_MESSAGES = ("Connection closed by peer", "Connection reset by peer")


def lost_a_process(error: BaseException) -> bool:
    """Whether ``error`` means that another process of the job died (a collective lost its peer)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in LOST_PEER_MESSAGES)


def exit_status(error: BaseException) -> int | None:
    """The exit status of ``ouro fit`` stopped by ``error`` without a traceback; None for other errors."""
    if isinstance(error, Preempted):
        return EXIT_PREEMPTED
    if isinstance(error, SIGTERMException):
        return EXIT_TERMINATED
    if lost_a_process(error):
        return 1
    return None


def stop_line(error: BaseException, step: int | None = None, root: str | Path | None = None) -> str | None:
    """The one line that says why ``ouro fit`` stopped and what a rerun resumes from; None for other errors."""
    at = f" at step {step}" if step is not None else ""
    hint = f"; {resume_hint(root)}" if root is not None else "; rerun to resume from the newest checkpoint"
    if isinstance(error, Preempted):
        return f"ouro: {error}"
    if isinstance(error, SIGTERMException):
        return (
            f"ouro: stopped by SIGTERM{at} (scancel, a time limit reached without a --signal warning, or a node "
            f"shutting down){hint}"
        )
    if lost_a_process(error):
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = re.sub(r"^\[[^\]]*\] ", "", reason).split(". This is typically")[0][:160]
        return f"ouro: error: lost another process of this job{at} ({reason}): it died or was killed{hint}"
    return None


def resume_hint(root: str | Path) -> str:
    """What a rerun of ``ouro fit`` on ``root`` resumes from, in a few words."""
    try:
        found = newest_readable_checkpoint(root, quiet=True)
    except ResumeError:
        found = None
    if found is None:
        return "no checkpoint was saved yet: a rerun starts the stage again"
    return f"a rerun resumes from {found.path} (step {found.checkpoint.get('global_step', '?')})"


def _say(line: str) -> None:
    print(f"ouro: {line}", file=sys.stderr, flush=True)


def slurm_job_id() -> str:
    """This job's id as ``scontrol`` names it (``<array job>_<task>`` for an array task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this job; its id, or None (with one line saying why) when SLURM refused."""
    job = slurm_job_id()
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        _say(f"could not requeue SLURM job {job}: {error}; resubmit it to resume")
        return None
    if result.returncode != 0:
        reason = (
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        )
        _say(f"could not requeue SLURM job {job}: {reason}; resubmit it to resume")
        return None
    return job
