"""Training throughput: tokens/s, FLOP/s counting every recurrent pass, and MFU when the peak is known."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from ouro.model import flops_per_token


def compute_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Trainer ``precision`` setting (``bf16-mixed`` -> bfloat16, ...)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32


class Throughput(L.Callback):
    """Log ``throughput/tokens_per_sec`` (all ranks), ``throughput/flops_per_sec`` (per device) and
    ``throughput/mfu`` every ``log_every_n_steps`` optimizer steps.

    FLOPs come from `ouro.model.flops_per_token` for the current config and row length: every one of the T
    passes of the stack, the LM head once per pass, x3 for backward (a 6 x params x tokens estimate
    undercounts a looped model by about T). Validation time is left out. MFU needs the device's peak:
    ``peak_flops`` or Lightning's table of CUDA chips (its names miss some, e.g. a plain "NVIDIA H200": pass
    ``peak_flops``; dense bf16 H100/H200 SXM: 989e12).
    """

    def __init__(self, log_every_n_steps: int = 10, peak_flops: float | None = None) -> None:
        """
        Args:
            log_every_n_steps: Optimizer steps per measurement window.
            peak_flops: Peak FLOP/s of one device for the training dtype (None: looked up for CUDA devices).
        """
        if (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"Throughput: log_every_n_steps must be a positive integer, got {log_every_n_steps!r}"
            )
        if peak_flops is not None and (
            isinstance(peak_flops, bool) or not isinstance(peak_flops, (int, float)) or peak_flops <= 0
        ):
            raise ValueError(f"Throughput: peak_flops must be a positive number, got {peak_flops!r}")
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self.last: dict[str, float] = {}
        self._reset_window()

    def _reset_window(self) -> None:
        self._t0: float | None = None
        self._paused = 0.0
        self._val_start: float | None = None
        self._tokens = 0
        self._flops = 0.0
        self._steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_flops is None and trainer.strategy.root_device.type == "cuda":
            self.peak_flops = get_available_flops(
                trainer.strategy.root_device, compute_dtype(trainer.precision)
            )
        self._reset_window()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:
            self._sync(trainer)
            self._t0 = time.perf_counter()
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rows, seq = batch["input_ids"].shape  # after any length warm-up reshaped the rows
        self._tokens += rows * seq * trainer.world_size
        self._flops += flops_per_token(pl_module.config, seq) * rows * seq
        if trainer.global_step > self._step_before:
            self._steps += 1
            if self._steps >= self.log_every_n_steps:
                self._sync(trainer)
                elapsed = time.perf_counter() - self._t0 - self._paused
                self._report(trainer, elapsed)
                self._reset_window()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:
            self._sync(trainer)
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None:
            self._sync(trainer)
            self._paused += time.perf_counter() - self._val_start
            self._val_start = None

    def _report(self, trainer: L.Trainer, elapsed: float) -> None:
        if elapsed <= 0:
            return
        metrics = {
            "throughput/tokens_per_sec": self._tokens / elapsed,
            "throughput/flops_per_sec": self._flops / elapsed,
        }
        if self.peak_flops:
            metrics["throughput/mfu"] = metrics["throughput/flops_per_sec"] / self.peak_flops
        self.last = metrics
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
