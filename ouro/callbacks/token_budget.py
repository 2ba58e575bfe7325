"""Token budget: stop a stage at N tokens, checkpoint it and mark it complete for the pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.schedule import check_token_count, tokens_seen
from ouro.run_dir import mark_complete


class TokenBudget(L.Callback):
    """Stop training after ``max_tokens`` tokens (at the end of that optimizer step), save a checkpoint and
    write ``stage_complete.json`` in the run directory (``trainer.default_root_dir``) with tokens, steps and
    time.

    The marker is written only after the checkpoint is on disk (atomically), so an interrupted stage never
    looks finished. A run resumed past its budget stops before training another step.

    ``trainer.max_steps`` still applies: whichever of the two comes first ends the run, and both are said at
    start. A run that ``max_steps`` ends before the budget is not marked complete.
    """

    def __init__(
        self, max_tokens: int, checkpoint_name: str = "last.ckpt", dirpath: str | None = None
    ) -> None:
        """
        Args:
            max_tokens: Tokens (all ranks) the stage trains on.
            checkpoint_name: File name of the checkpoint saved when the budget is reached.
            dirpath: Folder of that checkpoint. None: the ModelCheckpoint callback's folder, else
                ``<run dir>/checkpoints``.
        """
        self.max_tokens = check_token_count(type(self).__name__, "max_tokens", max_tokens, 1)
        if not checkpoint_name or "/" in checkpoint_name or not checkpoint_name.endswith(".ckpt"):
            raise ValueError(
                f"TokenBudget: checkpoint_name must be a file name ending in .ckpt, got {checkpoint_name!r}"
            )
        self.checkpoint_name = checkpoint_name
        self.dirpath = dirpath
        self.elapsed_s = 0.0  # training time over every session of this stage
        self._session_start: float | None = None
        self._step_before: int | None = None
        self.completed = False

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / self.checkpoint_name
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath) / self.checkpoint_name
        return Path(trainer.default_root_dir) / "checkpoints" / self.checkpoint_name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._session_start = time.monotonic()
        if trainer.max_steps is not None and trainer.max_steps > 0:
            rank_zero_info(
                f"TokenBudget: the stage ends at {self.max_tokens:,} tokens, or at trainer.max_steps="
                f"{trainer.max_steps} if that comes first (then it is not marked complete)"
            )
        if tokens_seen(pl_module) >= self.max_tokens:
            rank_zero_info(
                f"TokenBudget: {tokens_seen(pl_module)} tokens already trained (budget "
                f"{self.max_tokens}); finishing the stage without training"
            )
            self._finish(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped = self._step_before is not None and trainer.global_step > self._step_before
        if stepped and not self.completed and tokens_seen(pl_module) >= self.max_tokens:
            self._finish(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.completed or trainer.max_steps is None or trainer.max_steps < 1:
            return
        if trainer.global_step >= trainer.max_steps:
            rank_zero_info(
                f"TokenBudget: trainer.max_steps={trainer.max_steps} stopped the stage at "
                f"{tokens_seen(pl_module):,} of {self.max_tokens:,} tokens; it is not marked complete "
                "(raise --trainer.max_steps, or set it to -1, and rerun to finish it)"
            )

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.completed = True
        trainer.should_stop = True
        self._update_elapsed()
        path = self.checkpoint_path(trainer)
        # The full state, said explicitly: left unset, Lightning logs "`weights_only` was not set".
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            record = {
                "tokens": tokens_seen(pl_module),
                "max_tokens": self.max_tokens,
                "global_step": trainer.global_step,
                "train_seconds": round(self.elapsed_s, 3),
                "checkpoint": str(path),
            }
            Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
            mark_complete(trainer.default_root_dir, record)
            rank_zero_info(f"TokenBudget: stage complete at {record['tokens']} tokens; checkpoint {path}")
        trainer.strategy.barrier("TokenBudget")

    def _update_elapsed(self) -> None:
        if self._session_start is not None:
            now = time.monotonic()
            self.elapsed_s += now - self._session_start
            self._session_start = now

    def state_dict(self) -> dict[str, Any]:
        self._update_elapsed()
        return {"elapsed_s": self.elapsed_s, "max_tokens": self.max_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_s = float(state_dict.get("elapsed_s", 0.0))
