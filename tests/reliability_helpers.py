"""Helpers of tests/test_reliability*.py: a toy DataModule that resumes exactly, and `ouro` with one injected fault.

``python -m reliability_helpers FAULT ouro-args...`` runs ``ouro.cli.main(ouro-args)`` after installing FAULT:

* ``kill_in_checkpoint:N``: the N-th checkpoint write (counted from 1) writes part of the file, flushes it to disk
  and then the process SIGKILLs itself, i.e. a crash in the middle of writing a checkpoint;
* ``kill_at_step:N``: SIGKILL at the start of the training step that follows optimizer step N, before it is saved;
* ``none``: no fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from typing import Any

from torch.utils.data import DataLoader
from toy_data import ToyDataModule, _Patterns


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
