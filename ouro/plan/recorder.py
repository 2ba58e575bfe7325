"""The dispatch modes a counted step runs under: they show every op to the step's observers.

`StepRecorder` watches a step on real tensors (a measured CPU step). `FakeStepRecorder` *is* the fake tensor
mode of a plan, watching as it fakes: one Python mode per op instead of two, which matters, as a plan of a 2.6B
model at 64K runs a few hundred thousand ops. Observers are `ouro.plan.live_memory.LiveStorages` and
`ouro.plan.flops.PhaseFlops`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, _device_handler
from torch.utils._python_dispatch import TorchDispatchMode

_LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default
_DEVICE = torch.ops.prim.device.default


class Observer(Protocol):
    def observe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None: ...


class StepRecorder(TorchDispatchMode):
    """Run every op, then show it to each observer."""

    def __init__(self, *observers: Observer) -> None:
        super().__init__()
        self.observers = observers

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is not _DEVICE:
            for observer in self.observers:
                observer.observe(func, args, kwargs, out)
        return out


class FakeStepRecorder(FakeTensorMode):
    """A ``FakeTensorMode`` that shows every op it fakes to each observer (ops it decomposes once, as a whole).

    Scalar reads of fake data (``bool(mask.all())``, AdamW's step count) have no value to read: a plan assumes
    every label counts (the most memory), and every other scalar reads as 1.
    """

    def __init__(self, *observers: Observer) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.observers = observers
        self._depth = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # No torch.compile runs inside a plan, so this mode's dispatch need not be wrapped in a Dynamo-disabling
        # frame (per op, twice: here and in FakeTensorMode's own __torch_dispatch__, which `dispatch` skips).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _DEVICE:  # two ops in three: answered as FakeTensorMode answers it, without its dispatch
            return _device_handler(args)
        if func is _LOCAL_SCALAR and isinstance(args[0], FakeTensor):
            tensor = args[0]
            return True if tensor.dtype == torch.bool else (1.0 if tensor.is_floating_point() else 1)
        kwargs = kwargs or {}
        self._depth += 1
        try:
            out = self.dispatch(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if self._depth == 0:
            for observer in self.observers:
                observer.observe(func, args, kwargs, out)
        return out
