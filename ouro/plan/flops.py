"""FLOPs of a training step by phase, with activation checkpointing's recomputation told apart.

torch's ``FlopCounterMode`` formulas (matmuls, and the planned FlashAttention kernels of `ouro.plan.flash`) are
applied to every op; each op's FLOPs go to the current phase (``loss``: the network's forward of all T passes
plus the chunked loss; ``backward``; ``optimizer``). Ops that run inside a decoder layer's forward while the phase
is ``backward`` are the recomputation of a checkpointed layer: hardware FLOPs, not model FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.flop_counter import flop_registry

from ouro.model.looped import DecoderLayer


class PhaseFlops:
    """FLOPs per phase, and inside decoder layers' forwards (see the module's docstring); `observe` sees every op
    (through `ouro.plan.recorder.StepRecorder`)."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.totals: dict[str, float] = {}
        self.in_layers: dict[str, float] = {}
        self._layer_depth = 0

    def observe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Add an op's FLOPs (when torch has a formula for it) to the current phase."""
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = float(formula(*args, **kwargs, out_val=out))
            self.totals[self.phase] = self.totals.get(self.phase, 0.0) + flops
            if self._layer_depth:
                self.in_layers[self.phase] = self.in_layers.get(self.phase, 0.0) + flops

    @contextmanager
    def counting(self, phase: str) -> Iterator[None]:
        """Attribute the FLOPs of the ops run inside the block to ``phase``."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    @contextmanager
    def watching_layers(self, model: nn.Module) -> Iterator[None]:
        """Know when a `DecoderLayer`'s forward runs (in the forward, or recomputed in backward)."""

        def enter(*_: object) -> None:
            self._layer_depth += 1

        def leave(*_: object) -> None:  # also when checkpointing stops a recomputation early
            self._layer_depth -= 1

        handles = []
        for layer in model.modules():
            if isinstance(layer, DecoderLayer):
                handles.append(layer.register_forward_pre_hook(enter))
                handles.append(layer.register_forward_hook(leave, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @property
    def recompute(self) -> float:
        """FLOPs of decoder-layer forwards run during backward (activation checkpointing)."""
        return self.in_layers.get("backward", 0.0)

    @property
    def hardware(self) -> float:
        """Every FLOP of the forward, loss and backward phases, recomputation included."""
        return self.totals.get("loss", 0.0) + self.totals.get("backward", 0.0)

    @property
    def model(self) -> float:
        """FLOPs of the step without recomputation (what MFU is defined on)."""
        return self.hardware - self.recompute
