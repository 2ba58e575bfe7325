"""`FinalCheckpoint`: the end state of every stage in ``checkpoints/last.ckpt``, for the next stage."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from ouro.callbacks.token_budget import TokenBudget


class FinalCheckpoint(Callback):
    """Save ``checkpoints/last.ckpt`` when training ends normally, so the next stage always finds the end state."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        if any(isinstance(c, TokenBudget) and c.completed for c in trainer.callbacks):
            return  # TokenBudget already saved the final state
        trainer.save_checkpoint(
            Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", weights_only=False
        )
