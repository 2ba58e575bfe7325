"""Count the bytes of every tensor storage alive during a training step, and their peak.

torch's ``MemTracker`` refuses a module that runs more than once per step, and a looped model runs every layer
T times, so the count is kept here per storage instead of per module. A storage is counted from the op that
first returns it until Python frees it; its size is read again whenever an op touches it and whenever it is
resized in place (FSDP allocates and frees gathered parameters by resizing their storage). Works on real and on
fake tensors alike, so a measured CPU step and a planned fake step are counted by the same code.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary


class LiveStorages:
    """How many bytes of tensor storage are alive, and the most there ever were; `observe` sees every op (through
    `ouro.plan.recorder.StepRecorder`).

    ``live`` is the current total, ``peak`` the largest total since the last `reset_peak`. Tensors that existed
    before the mode was entered count from the first op that reads or writes them; `track` adds others (for
    example a model's parameters) at once. Meant for one device: a step run on CPU, or a fake step.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()

    # ------------------------------------------------------------------------------------------- counting
    def track(self, *values: Any) -> None:
        """Count (or recount) the storages behind the tensors in ``values`` and in lists, tuples and dicts in them
        (the shapes op arguments and results take)."""
        # Depth first, in order (an op's tensors are counted one after another, and the peak is taken after each);
        # iterative, as `observe` runs for every op of a step.
        pending = list(reversed(values))
        while pending:
            value = pending.pop()
            if isinstance(value, torch.Tensor):
                self._track_storage(value)
            elif isinstance(value, (list, tuple)):
                pending.extend(reversed(value))
            elif isinstance(value, dict):
                pending.extend(reversed(value.values()))

    def _track_storage(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (
            NotImplementedError,
            RuntimeError,
        ):  # e.g. a tensor subclass without storage (DTensor wrapper)
            return
        self._recount(storage)

    def _recount(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        known = self._sizes.get(storage)
        if known is None:
            self._sizes[storage] = known = [size]
            weakref.finalize(storage, self._free, known)
            self._add(size)
        elif known[0] != size:
            self._add(size - known[0])
            known[0] = size

    def _free(self, record: list[int]) -> None:
        self.live -= record[0]
        record[0] = 0

    def _add(self, delta: int) -> None:
        self.live += delta
        self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.live

    def observe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Count what an op read, wrote and returned."""
        self.track(args, kwargs, out)

    @contextmanager
    def resizes_counted(self) -> Iterator[None]:
        """Also count in-place storage resizes (``UntypedStorage.resize_`` does not pass the dispatcher)."""
        original = torch.UntypedStorage.resize_
        counter = self

        def resize_(storage: torch.UntypedStorage, size: int) -> torch.UntypedStorage:
            result = original(storage, size)
            if storage in counter._sizes:
                counter._recount(storage)
            return result

        torch.UntypedStorage.resize_ = resize_
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original
