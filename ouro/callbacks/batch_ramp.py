"""Batch-size ramp in tokens per optimizer step, through Lightning's gradient accumulation."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.schedule import check_token_count, tokens_seen


class BatchSizeRamp(L.Callback):
    """Grow the tokens per optimizer step from ``start_tokens_per_step`` to ``end_tokens_per_step``.

    The global batch is micro-batch tokens x world size x ``trainer.accumulate_grad_batches``; this callback
    sets the accumulation factor to ``floor(target / micro-batch tokens)`` where the target grows linearly
    with tokens seen over ``ramp_tokens`` (paper: 4M -> 8M tokens in stage 1a).

    Lightning decides when to step by ``batches of this epoch % accumulate_grad_batches`` (and zeroes
    gradients and scales the loss with the same factor), so the factor only changes right after an optimizer
    step and only where the epoch's batch count is a multiple of the new factor; otherwise the old factor runs
    until it is (fewer than new / gcd(old, new) extra steps). Every optimizer step therefore sums exactly its
    factor of micro-batches. Strategies that fix accumulation at start-up (DeepSpeed) cannot ramp.
    """

    def __init__(
        self,
        start_tokens_per_step: int,
        end_tokens_per_step: int,
        ramp_tokens: int,
        ramp_start_tokens: int = 0,
    ) -> None:
        """
        Args:
            start_tokens_per_step: Global tokens per optimizer step at the start (multiple of the micro-batch
                tokens).
            end_tokens_per_step: Global tokens per optimizer step at the end of the ramp (also a multiple).
            ramp_tokens: Tokens over which the batch grows linearly (0 = jump to the end size at
                ramp_start_tokens).
            ramp_start_tokens: Tokens seen before the ramp begins.
        """
        name = type(self).__name__
        self.start_tokens_per_step = check_token_count(
            name, "start_tokens_per_step", start_tokens_per_step, 1
        )
        self.end_tokens_per_step = check_token_count(name, "end_tokens_per_step", end_tokens_per_step, 1)
        self.ramp_tokens = check_token_count(name, "ramp_tokens", ramp_tokens)
        self.ramp_start_tokens = check_token_count(name, "ramp_start_tokens", ramp_start_tokens)
        if self.end_tokens_per_step < self.start_tokens_per_step:
            raise ValueError(
                f"{name}: end_tokens_per_step ({self.end_tokens_per_step}) is smaller than "
                f"start_tokens_per_step ({self.start_tokens_per_step}); the ramp only grows the "
                "batch"
            )
        self.micro_tokens: int | None = None
        self.factor: int | None = None
        self._session_started = False  # a batch of this process's fit has been seen

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def target_tokens_per_step(self, tokens: int) -> float:
        """Tokens per optimizer step the ramp asks for after ``tokens`` tokens."""
        if tokens < self.ramp_start_tokens:
            return float(self.start_tokens_per_step)
        if self.ramp_tokens == 0:
            return float(self.end_tokens_per_step)
        progress = min((tokens - self.ramp_start_tokens) / self.ramp_tokens, 1.0)
        return self.start_tokens_per_step + progress * (self.end_tokens_per_step - self.start_tokens_per_step)

    def factor_at(self, tokens: int) -> int:
        """Accumulation factor the ramp asks for after ``tokens`` tokens (needs the micro-batch size)."""
        if self.micro_tokens is None:
            raise RuntimeError(
                "BatchSizeRamp.factor_at needs the micro-batch size, known after the first batch"
            )
        return max(1, int(self.target_tokens_per_step(tokens) // self.micro_tokens))

    # --------------------------------------------------------------------------------------------- Lightning
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.strategy.handles_gradient_accumulation:
            raise ValueError(
                f"BatchSizeRamp: strategy {type(trainer.strategy).__name__} fixes gradient "
                "accumulation at start-up; remove BatchSizeRamp or use DDP / FSDP"
            )
        if stage == "fit" and self.factor is None and trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"BatchSizeRamp sets trainer.accumulate_grad_batches itself; remove "
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} from the "
                "recipe"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.factor is not None:  # resumed: the window that follows the checkpoint uses the saved factor
            trainer.accumulate_grad_batches = self.factor

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.micro_tokens is None:
            self.micro_tokens = batch["input_ids"].numel() * trainer.world_size
            ends = {
                "start_tokens_per_step": self.start_tokens_per_step,
                "end_tokens_per_step": self.end_tokens_per_step,
            }
            for field, value in ends.items():
                if value % self.micro_tokens:
                    raise ValueError(
                        f"BatchSizeRamp: {field} ({value}) is not a multiple of the tokens per "
                        f"micro-batch (batch_size x seq_len x world_size = {self.micro_tokens})"
                    )
            if self.factor is None:
                self.factor = self.factor_at(tokens_seen(pl_module))
                trainer.accumulate_grad_batches = self.factor
        elif (
            not self._session_started and batch["input_ids"].numel() * trainer.world_size != self.micro_tokens
        ):
            # Resumed on another world size: the same tokens per step take another number of micro-batches.
            before, self.micro_tokens = self.micro_tokens, batch["input_ids"].numel() * trainer.world_size
            self.factor = self.factor_at(tokens_seen(pl_module))
            trainer.accumulate_grad_batches = self.factor
            rank_zero_info(
                f"BatchSizeRamp: micro-batch {before} -> {self.micro_tokens} tokens (world size {trainer.world_size});"
                f" {self.factor} micro-batches per step ({self.factor * self.micro_tokens} tokens)"
            )
        elif batch["input_ids"].numel() * trainer.world_size != self.micro_tokens:
            raise ValueError(
                f"BatchSizeRamp: micro-batch changed from {self.micro_tokens} to "
                f"{batch['input_ids'].numel() * trainer.world_size} tokens; the ramp needs a "
                "fixed micro-batch size"
            )

        self._session_started = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done_in_epoch = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if done_in_epoch % trainer.accumulate_grad_batches:
            return  # inside an accumulation window
        wanted = self.factor_at(tokens_seen(pl_module))
        if wanted != self.factor and done_in_epoch % wanted == 0:
            rank_zero_info(
                f"BatchSizeRamp: {self.factor} -> {wanted} micro-batches per step "
                f"({wanted * self.micro_tokens} tokens) at {tokens_seen(pl_module)} tokens"
            )
            self.factor = wanted
            trainer.accumulate_grad_batches = wanted

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        pl_module.log(
            "train/tokens_per_step",
            float(trainer.accumulate_grad_batches * (self.micro_tokens or 0)),
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "micro_tokens": self.micro_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.factor = state_dict.get("factor")
        self.micro_tokens = state_dict.get("micro_tokens")
