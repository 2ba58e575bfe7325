"""Helpers of the crash-safety tests (kill -9, full disks, resume): a toy DataModule that resumes exactly, a tiny
``ouro fit`` recipe on it, and `ouro` with one injected fault.

``python -m reliability_helpers FAULT ouro-args...`` runs ``ouro.cli.main(ouro-args)`` after installing FAULT:

* ``kill_in_checkpoint:N``: the N-th checkpoint write (counted from 1) writes part of the file, flushes it to disk
  and then the process SIGKILLs itself, i.e. a crash in the middle of writing a checkpoint;
* ``kill_at_step:N``: SIGKILL at the start of the training step that follows optimizer step N, before it is saved;
* ``none``: no fault.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from toy_data import ToyDataModule, _Patterns

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class ResumableLoader(DataLoader):
    """A fixed-order loader whose position is saved in the checkpoint (Lightning calls ``state_dict``), so a
    resumed fit sees exactly the batches an uninterrupted one would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = 0
        self._yielded = 0

    def __iter__(self):  # noqa: ANN204
        start, self._start = self._start, 0
        self._yielded = start
        for index, batch in enumerate(super().__iter__()):
            if index >= start:
                self._yielded = index + 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"yielded": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = int(state["yielded"])


class ResumableToyDataModule(ToyDataModule):
    """`ToyDataModule` whose training loader resumes mid-epoch at the exact batch."""

    def __init__(self, seq_len: int = 16, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__(seq_len=seq_len, batch_size=batch_size)
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        data = _Patterns(self.train_size, self.seq_len, self.vocab_size, 0)
        return ResumableLoader(data, batch_size=self.batch_size)


#: The smallest looped model on `ResumableToyDataModule`, trained by ``ouro fit`` for ``{steps}`` steps; ``{trainer}``
#: holds further trainer lines (each indented by two spaces).
TINY_RESUMABLE_RECIPE = """\
seed_everything: 3
cpu_threads: 1
trainer:
  accelerator: cpu
  max_steps: {steps}
  enable_progress_bar: false
  enable_model_summary: false
  val_check_interval: 1000
  check_val_every_n_epoch: null
  limit_val_batches: 0
  num_sanity_val_steps: 0
{trainer}model:
  model:
    vocab_size: 512
    hidden_size: 32
    intermediate_size: 64
    num_hidden_layers: 1
    num_attention_heads: 2
    num_key_value_heads: 2
    max_position_embeddings: 32
    total_ut_steps: 2
data:
  class_path: reliability_helpers.ResumableToyDataModule
  init_args:
    seq_len: 8
    batch_size: 2
"""


def write_recipe(folder: Path, steps: int, trainer: str = "  logger: false\n") -> Path:
    """`TINY_RESUMABLE_RECIPE` for ``steps`` steps with the ``trainer`` lines, written to ``folder/r{steps}.yaml``."""
    path = folder / f"r{steps}.yaml"
    path.write_text(TINY_RESUMABLE_RECIPE.format(steps=steps, trainer=trainer))
    return path


def fit_args(recipe: Path, run: Path, *extra: str) -> list[str]:
    """``ouro fit`` arguments: ``recipe`` into the run directory ``run``, then ``extra``."""
    return ["fit", "--config", str(recipe), "--trainer.default_root_dir", str(run), *extra]


def fit_in_process(*args: str) -> None:
    """``ouro fit`` in this process, without the CLI's error handling (a failure raises)."""
    from ouro.trainer_cli import run_trainer_cli

    run_trainer_cli(list(args))


def ouro_with_fault(
    fault: str, args: list[str], cwd: Path, temp: Path | None = None
) -> subprocess.CompletedProcess:
    """``ouro ARGS`` in a subprocess with ``fault`` installed (see the module docstring); ``temp`` as its TMPDIR."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    if temp is not None:
        env["TMPDIR"] = str(temp)
    command = [sys.executable, "-m", "reliability_helpers", fault, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file, on the CPU, through ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_checkpoint(path: Path, step: int) -> Path:
    """A small readable checkpoint of step ``step`` at ``path`` (one tensor of 64 values equal to ``step``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((64,), float(step))}, "global_step": step}, path)
    return path


def age_file(path: Path, seconds: float) -> None:
    """Set back a file's modification time by ``seconds`` (checkpoint selection prefers the newest)."""
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same step, tokens seen, weights and AdamW moments, bit for bit."""
    assert a["global_step"] == b["global_step"]
    assert a["ouro"]["tokens_seen"] == b["ouro"]["tokens_seen"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for state_a, state_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[name], state_b[name]), name


class _DyingWriter:
    """A file handle that lets ``limit`` bytes through, syncs them to disk and kills the process."""

    def __init__(self, handle: Any, limit: int) -> None:
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data: bytes) -> int:
        room = self.limit - self.written
        if len(data) >= room:
            self.handle.write(bytes(data[:room]))
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


class _FullDiskWriter(_DyingWriter):
    """A file handle that lets ``limit`` bytes through and then fails as a full disk does."""

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.limit:
            self.handle.write(bytes(data[: self.limit - self.written]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)


def failing_checkpoint_writes(on_write: int, writer: type = _FullDiskWriter, limit: int = 4096):
    """A stand-in for ``ouro.checkpoint_io.atomic_open`` whose ``on_write``-th use wraps the file in ``writer``."""
    from ouro.atomic import atomic_open

    calls = {"n": 0}

    @contextlib.contextmanager
    def patched(path: Any, mode: str = "wb"):  # noqa: ANN202
        calls["n"] += 1
        with atomic_open(path, mode) as handle:
            yield writer(handle, limit) if calls["n"] == on_write else handle

    return patched


def install(fault: str) -> None:
    """Install ``fault`` (see the module docstring) in this process."""
    name, _, value = fault.partition(":")
    if name == "kill_in_checkpoint":
        import ouro.checkpoint_io

        ouro.checkpoint_io.atomic_open = failing_checkpoint_writes(int(value), _DyingWriter)
    elif name == "kill_at_step":
        from ouro.module import OuroLM

        original = OuroLM.training_step

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
            if self.trainer.global_step == int(value):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch, batch_idx)

        OuroLM.training_step = training_step
    elif name != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from ouro.cli import main

    main(sys.argv[2:])
