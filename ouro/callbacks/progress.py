"""A progress bar in the stage's own units: tokens of its `TokenBudget`, else optimizer steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from ouro.callbacks.schedule import tokens_seen
from ouro.callbacks.token_budget import TokenBudget


class StageProgress(TQDMProgressBar):
    """Training progress as tokens out of the stage's `TokenBudget` (``1.2M/3.0M tok``, with tokens/s), or as
    optimizer steps out of ``trainer.max_steps`` when there is no budget; the stage's name as the description.

    Lightning's own bar counts epochs, which a stage driven by tokens or steps does not have (it showed
    ``Epoch 0/-2``). ``ouro fit`` adds this bar unless the recipe names another one or disables the bar.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        """
        Args:
            refresh_rate: Redraw every this many training batches.
            leave: Keep the finished bar on screen.
        """
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    @staticmethod
    def progress(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int | None, int, str]:
        """(total, done, unit): tokens when a TokenBudget ends the stage, else optimizer steps."""
        budget = next((c for c in trainer.callbacks if isinstance(c, TokenBudget)), None)
        if budget is not None:
            return budget.max_tokens, tokens_seen(pl_module), "tok"
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return total, trainer.global_step, "step"

    @staticmethod
    def description(trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        name = pl_module.stage.name or Path(trainer.default_root_dir).name
        budget = any(isinstance(c, TokenBudget) for c in trainer.callbacks)
        if budget and trainer.max_steps and trainer.max_steps > 0:
            return f"{name} (or step {trainer.max_steps})"
        return name

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not Lightning's version, which would first draw "Epoch 0" with a batch count.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        total, done, unit = self.progress(trainer, pl_module)
        bar.reset(total=total)
        bar.unit, bar.unit_scale = unit, unit == "tok"
        bar.n = done
        bar.set_description(self.description(trainer, pl_module))
        bar.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar.disable or (batch_idx + 1) % self.refresh_rate:
            return
        bar.n = self.progress(trainer, pl_module)[1]
        bar.set_postfix(self.get_metrics(trainer, pl_module))
        bar.refresh()
