"""Checkpoint writes that never leave a truncated checkpoint under a checkpoint's name.

`AtomicCheckpointIO` is the Trainer plugin ``ouro fit`` installs: Lightning's checkpoint format, written through
`ouro.atomic.atomic_open` (a hidden temporary file in the checkpoint's own folder, fsync, rename, fsync of the
folder) instead of Lightning's default, whose temporary file lives in the system temp dir, so on another
filesystem its last step is a copy that a full disk or a kill leaves truncated. Before each write it compares the
free space with the checkpoint's size and warns while there is still time to act; a failed write ends with one
line that says the previous checkpoint is intact.

Sharded (FSDP) checkpoints are folders written by every rank and not through a ``CheckpointIO``:
`AtomicShardedSave` (mixed into ``ouro.distributed``'s strategies) writes them into a hidden staging folder,
writes `SHARDED_MARKER` last, and only then renames the folder into place. A folder without the marker is
incomplete (`ouro.resume` never resumes from one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from ouro.atomic import atomic_open, atomic_write_text, replace_directory, temporary_sibling
from ouro.errors import WriteError, describe_write_failure, free_bytes, human_bytes, os_error_behind

#: Written last into a sharded checkpoint folder: the folder is complete only when this file exists.
SHARDED_MARKER = "ouro_checkpoint_complete.json"
#: Warn when the free space would not hold this many more checkpoints of the current size.
SPARE_CHECKPOINTS = 2


def checkpoint_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint: what ``torch.save`` will write, give or take the pickle."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(checkpoint_nbytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(checkpoint_nbytes(value) for value in obj)
    return 0


def warn_if_short_of_space(path: Path, needed: int) -> None:
    """Warn when the folder of ``path`` cannot hold `SPARE_CHECKPOINTS` more checkpoints of ``needed`` bytes."""
    free = free_bytes(path.parent)
    if free is None or free >= SPARE_CHECKPOINTS * needed:
        return
    if free < needed:
        outlook = "this checkpoint will probably not fit"
    else:
        outlook = "the next checkpoint will probably not fit"
    rank_zero_warn(
        f"ouro: only {human_bytes(free)} free on the filesystem of {path.parent}; a checkpoint needs about "
        f"{human_bytes(needed)}: {outlook}. Free space now (the previous checkpoint stays intact if a write fails)."
    )


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (see the module docstring); remote paths
    (``s3://`` ...) keep Lightning's fsspec transaction."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        needed = checkpoint_nbytes(checkpoint)
        if path.exists():
            needed = max(needed, path.stat().st_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        warn_if_short_of_space(path, needed)
        try:
            with atomic_open(path, "wb") as handle:
                torch.save(checkpoint, handle)
        except Exception as failure:
            error = os_error_behind(failure)
            if error is None:
                raise
            intact = (
                f"the previous {path.name} is intact" if path.exists() else "no partial file was left behind"
            )
            message = describe_write_failure("checkpoint", path, error, needed, intact + "; rerun to resume")
            raise WriteError(message, error.errno) from None


def is_complete_sharded(folder: Path) -> bool:
    """Whether a sharded checkpoint folder was written to the end (its `SHARDED_MARKER` exists)."""
    return (folder / SHARDED_MARKER).is_file()


class AtomicShardedSave:
    """Strategy mixin: sharded checkpoint folders appear under their name only once complete.

    Every rank writes its shards into the same hidden staging folder (a sibling of the final one); after a
    barrier rank 0 writes `SHARDED_MARKER` and renames the staging folder over the final name
    (`ouro.atomic.replace_directory`). Full (one-file) checkpoints go through the strategy's ``CheckpointIO``.
    """

    def _writes_sharded_checkpoints(self) -> bool:
        return getattr(self, "_state_dict_type", None) == "sharded" or bool(
            getattr(self, "_save_distributed_checkpoint", False)
        )

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._writes_sharded_checkpoints():
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        final = Path(self.broadcast(str(filepath)))
        staging = Path(self.broadcast(str(temporary_sibling(final))))
        if self.global_rank == 0 and final.is_dir():
            warn_if_short_of_space(final, sum(p.stat().st_size for p in final.rglob("*") if p.is_file()))
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("ouro_sharded_checkpoint_written")
        if self.global_rank == 0:
            record = {"world_size": self.world_size, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_text(staging / SHARDED_MARKER, json.dumps(record) + "\n")
            replace_directory(staging, final)
        self.barrier("ouro_sharded_checkpoint_in_place")


def with_atomic_checkpoint_io(plugins: Any, strategy: Any) -> list:
    """The Trainer's ``plugins`` plus an `AtomicCheckpointIO`, unless the recipe chose a ``CheckpointIO``
    (as a plugin or on its strategy instance)."""

    if plugins is None:
        plugins = []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None):
        return plugins
    return [*plugins, AtomicCheckpointIO()]
