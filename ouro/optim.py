"""AdamW for `ouro.module.OuroLM`: its settings, and weight decay on matrices only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class OptimizerConfig:
    """AdamW settings (paper: β = (0.9, 0.95), weight decay 0.1, gradient clip 1.0 set on the Trainer)."""

    lr: float = 3e-4
    """Peak learning rate. LR-schedule callbacks scale it by tokens seen; without one it stays constant."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW β1, β2."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (projections, embedding, LM head, gate weight); norms and biases get 0."""
    eps: float = 1e-8
    """AdamW epsilon."""


def parameter_groups(net: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: norm weights and biases (the gate's) get none.

    Chosen by name, not by ``dim()``: FSDP flattens sharded parameters to 1-D. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if param.requires_grad:
            skip = name.endswith(".bias") or "norm" in name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            (no_decay if skip else decay).append(param)
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def adamw(net: torch.nn.Module, settings: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` (fused when every parameter is on CUDA)."""
    groups = parameter_groups(net, settings.weight_decay)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps, fused=fused or None
    )
