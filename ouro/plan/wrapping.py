"""Wrap a module the way its Lightning strategy would (DDP, FSDP1, FSDP2 or nothing) and call its loss the way
Lightning's training loop does, so a plan or a measured step runs the same code as a fit."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.strategies.strategy import _ForwardRedirection
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel

from ouro.distributed import apply_fsdp2
from ouro.errors import PlanError
from ouro.module import OuroLM

#: Trainer precisions a plan understands, and the autocast dtype each runs the forward under.
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE_DTYPE = {"32-true": None, "32": None, "bf16-true": torch.bfloat16, "16-true": torch.float16}


@dataclass
class WrappedStep:
    """A wrapped module and how one training step calls it."""

    module: OuroLM
    wrapper: torch.nn.Module
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    clip_gradients: Callable[[float], Any]
    forward_context: Callable[[], Any]


def strategy_kind(strategy: Strategy | None) -> str:
    """``fsdp`` (FSDP1), ``fsdp2``, ``ddp`` or ``single``."""
    if isinstance(strategy, FSDPStrategy):
        return "fsdp"
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    if isinstance(strategy, DDPStrategy):
        return "ddp"
    return "single"


def check_precision(precision: str) -> None:
    if precision not in AUTOCAST and precision not in TRUE_DTYPE:
        raise PlanError(
            f"trainer.precision {precision!r} is not planned; use one of {[*AUTOCAST, *TRUE_DTYPE]}"
        )


def wrap(module: OuroLM, strategy: Strategy | None, precision: str, device: torch.device) -> WrappedStep:
    """Apply ``strategy``'s wrapping to ``module`` (over the default process group) as its ``setup`` would."""
    check_precision(precision)
    kind = strategy_kind(strategy)
    if TRUE_DTYPE.get(precision) is not None:
        module.to(TRUE_DTYPE[precision])

    def autocast() -> Any:
        if precision in AUTOCAST:
            return torch.autocast(device.type, dtype=AUTOCAST[precision])
        return nullcontext()

    if kind == "fsdp":
        if not isinstance(strategy.precision_plugin, FSDPPrecision):
            strategy.precision_plugin = FSDPPrecision(precision)
        wrapper = FullyShardedDataParallel(
            module,
            cpu_offload=strategy.cpu_offload,
            mixed_precision=strategy.mixed_precision_config,
            sharding_strategy=strategy.sharding_strategy,
            device_id=device,
            **strategy.kwargs,
        )
        return WrappedStep(
            module,
            wrapper,
            lambda batch: _ForwardRedirection()(wrapper, module, "compute_loss", batch)[0].loss,
            lambda norm: wrapper.clip_grad_norm_(norm),
            autocast,
        )
    if kind == "fsdp2":
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),), mesh_dim_names=("dp",))
        apply_fsdp2(
            module.net, mesh, strategy.reshard_after_forward, strategy.param_dtype, strategy.reduce_dtype
        )
        return _plain(module, module, autocast)
    if kind == "ddp":
        wrapper = DistributedDataParallel(module, **getattr(strategy, "_ddp_kwargs", {}))
        return WrappedStep(
            module,
            wrapper,
            lambda batch: _ForwardRedirection()(wrapper, module, "compute_loss", batch)[0].loss,
            lambda norm: torch.nn.utils.clip_grad_norm_(_trained(module), norm),
            autocast,
        )
    return _plain(module, module, autocast)


def _plain(module: OuroLM, wrapper: torch.nn.Module, autocast: Callable[[], Any]) -> WrappedStep:
    return WrappedStep(
        module,
        wrapper,
        lambda batch: module.compute_loss(batch)[0].loss,
        lambda norm: torch.nn.utils.clip_grad_norm_(_trained(module), norm),
        autocast,
    )


def _trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
