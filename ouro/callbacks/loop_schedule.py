"""Loop-count (recurrent steps T) and entropy-coefficient (β) schedules in tokens."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.long_context import schedule_control
from ouro.callbacks.schedule import Piecewise, tokens_seen


class LoopSchedule(L.Callback):
    """Set the recurrent steps T and Stage I's β from tokens seen, through the module's ``set_loop_count`` and
    ``set_entropy_coef``.

    Both are piecewise constant: ``[[0, 8], [N, 4]]`` trains with 8 steps until N tokens, then 4. Paper: T 8
    -> 4 and β 0.1 -> 0.05 after the first (warmup) stage. The values are applied before every training batch
    and before validation, and logged as ``train/total_ut_steps`` and ``train/entropy_coef``.
    """

    def __init__(
        self, steps: list[tuple[int, int]] | None = None, beta: list[tuple[int, float]] | None = None
    ) -> None:
        """
        Args:
            steps: ``[[tokens, T], ...]``: recurrent steps from each token count on (first entry at 0).
            beta: ``[[tokens, β], ...]``: entropy coefficient from each token count on (first entry at 0).
        """
        name = type(self).__name__
        if steps is None and beta is None:
            raise ValueError(f"{name}: set steps and/or beta, otherwise the callback does nothing")
        self.steps = None if steps is None else Piecewise(name, "steps", steps, int, 1)
        self.beta = None if beta is None else Piecewise(name, "beta", beta, float, 0.0)
        self._applied: tuple[int | None, float | None] = (None, None)

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def steps_at(self, tokens: int) -> int | None:
        return None if self.steps is None else self.steps(tokens)

    def beta_at(self, tokens: int) -> float | None:
        return None if self.beta is None else self.beta(tokens)

    def _apply(self, pl_module: L.LightningModule) -> None:
        tokens = tokens_seen(pl_module)
        values = (self.steps_at(tokens), self.beta_at(tokens))
        steps, beta = values
        # Set every time (cheap): stage initialisation or a checkpoint may have changed them meanwhile.
        name = type(self).__name__
        if steps is not None:
            schedule_control(pl_module, "set_loop_count", name)(steps)
        if beta is not None:
            schedule_control(pl_module, "set_entropy_coef", name)(beta)
        if self._applied != (None, None) and values != self._applied:
            rank_zero_info(f"LoopSchedule: T={steps}, beta={beta} from {tokens} tokens")
        self._applied = values

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.beta is not None and pl_module.objective != "stage1":
            raise ValueError(
                "LoopSchedule: beta only affects objective 'stage1'; drop beta from the callback"
            )
        self._apply(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply(pl_module)
        steps, beta = self._applied
        if steps is not None:
            pl_module.log(
                "train/total_ut_steps", float(steps), on_step=True, on_epoch=False, rank_zero_only=True
            )
        if beta is not None:
            pl_module.log(
                "train/entropy_coef", float(beta), on_step=True, on_epoch=False, rank_zero_only=True
            )

    def state_dict(self) -> dict[str, Any]:
        steps, beta = self._applied
        return {"total_ut_steps": steps, "entropy_coef": beta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The values are functions of the restored tokens_seen and are re-applied before the next forward.
        self._applied = (state_dict.get("total_ut_steps"), state_dict.get("entropy_coef"))
