"""`ValidationMeans`: the running means behind `ouro.module.OuroLM`'s ``val/`` metrics."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric


class ValidationMeans(torch.nn.ModuleDict):
    """Weighted means of named validation values (``loss``, ``ce_step2``, ``loss_q0.5`` ...), one torchmetrics
    ``MeanMetric`` each, synchronised across ranks when computed.

    A mean is created the first time its name is updated, so a loop count that changes mid-stage (more
    ``ce_step*`` names) is reported correctly. Its states are not part of the module's ``state_dict``.
    """

    def add(self, name: str, value: torch.Tensor, weight: int) -> None:
        """Add ``value`` (a scalar tensor) with ``weight`` (tokens) to the mean called ``name``."""
        key = name.replace(".", "_")  # a ModuleDict key cannot hold a dot
        if key not in self:
            self[key] = MeanMetric().to(value.device)
            self[key].log_name = name
        self[key].update(value, weight=weight)

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """Every mean updated since the last call, by name; then all of them start again from empty."""
        values = {}
        for metric in self.values():
            if metric.update_count:
                values[metric.log_name] = metric.compute()
            metric.reset()
        return values
