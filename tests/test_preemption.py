"""Pre-emption without SLURM (`ouro.preemption`): SIGUSR1 becomes a checkpoint at the next optimizer step and a
one-line stop; the rerun ends bit-identical to an uninterrupted run. Loader workers ignore SIGTERM / SIGUSR1;
Lightning's own ``hpc_ckpt_<n>.ckpt`` counts as a checkpoint of the run. (Under a real SLURM: test_slurm.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback
from reliability_helpers import age_file as _age
from reliability_helpers import assert_same_training_state as _assert_same_training_state
from reliability_helpers import fit_args as _fit_args
from reliability_helpers import fit_in_process as _fit_in_process
from reliability_helpers import load_checkpoint as _load
from reliability_helpers import tiny_checkpoint
from reliability_helpers import write_recipe as _recipe
from torch.utils.data import DataLoader, Dataset

from ouro.cli import main
from ouro.data.workers import LeaveSignalsToMainProcess
from ouro.preemption import EXIT_PREEMPTED, lost_a_process, stop_line
from ouro.resume import inspect_checkpoint, newest_readable_checkpoint

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SignalAtStep(Callback):
    """Sends SIGUSR1 to this process when optimizer step ``step`` has been taken (as SLURM's warning would)."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_saves_at_the_next_step_and_the_rerun_is_bit_identical(tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path, 6)
    reference = tmp_path / "reference"
    _fit_in_process(*_fit_args(recipe, reference))

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(_fit_args(recipe, run, "--trainer.callbacks+=test_preemption.SignalAtStep"))
    assert stopped.value.code == EXIT_PREEMPTED
    last = run / "checkpoints" / "last.ckpt"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ouro: pre-empted")]
    assert lines == [f"ouro: pre-empted (SIGUSR1): saved step 3 to {last}; rerun to resume"]
    assert _load(last)["global_step"] == 3
    assert not (run / "run.lock").exists(), "the lock is released on the way out"
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None), "handlers restored after the fit"

    _fit_in_process(*_fit_args(recipe, run))
    assert "ouro: resuming" in capsys.readouterr().err
    _assert_same_training_state(_load(last), _load(reference / "checkpoints" / "last.ckpt"))


class SignalAtSetup(Callback):
    """Sends SIGUSR1 to this process while the fit sets up, before its signal handlers exist (as a warning that
    reaches a job still loading its model would)."""

    def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
        os.kill(os.getpid(), signal.SIGUSR1)


def test_a_warning_during_start_up_is_a_checkpoint_at_the_first_step(tmp_path) -> None:
    run = tmp_path / "run"
    args = _fit_args(_recipe(tmp_path, 6), run, "--trainer.callbacks+=test_preemption.SignalAtSetup")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "ouro.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    # Without the held warning, SIGUSR1's default action ends the process (return code -10, nothing saved).
    assert result.returncode == EXIT_PREEMPTED, result.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    lines = [line for line in result.stderr.splitlines() if line.startswith("ouro: pre-empted")]
    assert lines == [f"ouro: pre-empted (SIGUSR1): saved step 1 to {last}; rerun to resume"]
    assert _load(last)["global_step"] == 1


class _Dispositions(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(
            [
                signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
                signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
            ]
        )


def test_loader_workers_leave_sigterm_and_sigusr1_to_the_main_process() -> None:
    loader = DataLoader(_Dispositions(), num_workers=1, worker_init_fn=LeaveSignalsToMainProcess())
    assert next(iter(loader)).tolist() == [[True, True]]
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN, "the main process keeps its own handlers"


def test_lightning_hpc_checkpoint_counts_when_newer(tmp_path) -> None:
    _age(tiny_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 4), 60)
    assert newest_readable_checkpoint(tmp_path).path.name == "last.ckpt"
    hpc = tiny_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 6)
    assert newest_readable_checkpoint(tmp_path).path == hpc


def test_a_lost_peer_is_one_line() -> None:
    error = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:28060. This is "
        "typically caused by a remote worker crashing. Check the logs of the remote worker before reporting an error."
    )
    assert lost_a_process(error) and not lost_a_process(RuntimeError("shape mismatch"))
    assert stop_line(error, step=7) == (
        "ouro: error: lost another process of this job at step 7 (Connection closed by peer [127.0.0.1]:28060): it "
        "died or was killed; rerun to resume from the newest checkpoint"
    )


class SignalOneRank(Callback):
    """Sends SIGUSR1 to rank 1 alone after optimizer step 2: rank 0 never receives it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == 2 and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_signal_to_one_rank_is_a_sharded_checkpoint_of_every_rank_at_one_step(tmp_path) -> None:
    """FSDP2 on 2 processes: the sharded save is a collective, so the rank that got the signal must not enter it
    alone; the ranks agree at the step boundary and both write their shard of the same step."""
    recipe = _recipe(tmp_path, 6)
    fsdp = "{class_path: ouro.distributed.OuroFSDP2Strategy, init_args: {param_dtype: null}}"
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "reliability_helpers", "none", *_fit_args(recipe, run),
        "--trainer.devices", "2", "--trainer.strategy", fsdp, "--trainer.use_distributed_sampler", "false",
        "--trainer.callbacks+=test_preemption.SignalOneRank",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    last = run / "checkpoints" / "last.ckpt"
    assert (
        f"ouro: pre-empted (another rank's signal): saved step 2 to {last}; rerun to resume" in result.stderr
    ), result.stderr[-4000:]
    assert result.stderr.count("ouro: pre-empted") == 1, "one line, from rank 0"
    assert "exitcode  : 75" in result.stderr  # what torchrun reports for each rank
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    saved = inspect_checkpoint(last)
    assert saved.problem is None and saved.checkpoint["global_step"] == 2
