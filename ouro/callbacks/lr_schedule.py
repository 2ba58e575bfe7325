"""Warmup-stable-decay learning rate in tokens; annealing stages continue from the previous stage's LR."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ouro.callbacks.schedule import check_token_count, tokens_seen
from ouro.callbacks.token_budget import TokenBudget

DECAY_SHAPES = ("cosine", "linear", "1-sqrt")


def decay_factor(shape: str, progress: float) -> float:
    """Fraction of the way from the floor to the peak after ``progress`` (0..1) of the decay phase: 1 -> 0."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "linear":
        return 1.0 - progress
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"decay must be one of {DECAY_SHAPES}, got {shape!r}")


class WarmupStableDecay(L.Callback):
    """Learning rate as a function of tokens seen: linear warmup, constant, then decay to a floor.

    Before every optimizer step it sets the LR of every parameter group from ``pl_module.tokens_seen``
    (counting the step's own tokens) and logs it as ``lr``. The peak is ``pl_module.optim.lr``, or with
    ``init_lr_from_previous`` the LR the previous stage ended with (``pl_module.stage.previous_final_lr``, set
    by stage initialisation), so an annealing stage decays from where the last stage stopped. Paper (Table 1):
    warmup then 3e-4 (stage 1a), constant 3e-4 (1b), cosine to 3e-5 (CT annealing), constant 3e-5 (LongCT),
    cosine to 1e-5 (mid-training).

    The peak, the total and the last LR are saved in the checkpoint, so a resumed stage follows the same
    curve.
    """

    def __init__(
        self,
        total_tokens: int | None = None,
        warmup_tokens: int = 0,
        decay_tokens: int = 0,
        decay: Literal["cosine", "linear", "1-sqrt"] = "cosine",
        min_lr: float = 0.0,
        min_lr_ratio: float | None = None,
        init_lr_from_previous: bool = False,
    ) -> None:
        """
        Args:
            total_tokens: Tokens of the stage; decay ends here. None: the ``max_tokens`` of the TokenBudget
                callback.
            warmup_tokens: Tokens of linear warmup from 0 to the peak LR.
            decay_tokens: Tokens of the final decay to the floor (0 = constant after warmup).
            decay: Shape of the decay: ``cosine``, ``linear`` or ``1-sqrt``.
            min_lr: Floor reached at the end of the decay, as an absolute LR.
            min_lr_ratio: Floor as a fraction of the peak LR (instead of ``min_lr``).
            init_lr_from_previous: Start from the LR the previous stage ended with instead of
                ``optimizer.lr``.
        """
        name = type(self).__name__
        self.total_tokens = (
            None if total_tokens is None else check_token_count(name, "total_tokens", total_tokens, 1)
        )
        self.warmup_tokens = check_token_count(name, "warmup_tokens", warmup_tokens)
        self.decay_tokens = check_token_count(name, "decay_tokens", decay_tokens)
        if decay not in DECAY_SHAPES:
            raise ValueError(f"{name}: decay must be one of {DECAY_SHAPES}, got {decay!r}")
        self.decay = decay
        if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or min_lr < 0:
            raise ValueError(f"{name}: min_lr must be a number >= 0, got {min_lr!r}")
        if min_lr_ratio is not None:
            if (
                isinstance(min_lr_ratio, bool)
                or not isinstance(min_lr_ratio, (int, float))
                or not 0 <= min_lr_ratio <= 1
            ):
                raise ValueError(f"{name}: min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
            if min_lr:
                raise ValueError(f"{name}: set either min_lr or min_lr_ratio, not both")
        self.min_lr, self.min_lr_ratio = float(min_lr), min_lr_ratio
        self.init_lr_from_previous = bool(init_lr_from_previous)
        if self.total_tokens is not None:
            self._check_total(self.total_tokens)
        self.peak_lr: float | None = None
        self.last_lr: float | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def _check_total(self, total: int) -> None:
        if self.warmup_tokens + self.decay_tokens > total:
            raise ValueError(
                f"{type(self).__name__}: warmup_tokens + decay_tokens ({self.warmup_tokens} + "
                f"{self.decay_tokens} = {self.warmup_tokens + self.decay_tokens}) exceeds "
                f"total_tokens ({total}); shorten warmup/decay or raise the budget"
            )

    # ---------------------------------------------------------------------------------------------- the curve
    def floor(self, peak: float) -> float:
        return peak * self.min_lr_ratio if self.min_lr_ratio is not None else self.min_lr

    def lr_at(self, tokens: int, peak: float | None = None) -> float:
        """The learning rate after ``tokens`` tokens for peak LR ``peak`` (default: the resolved peak)."""
        peak = self.peak_lr if peak is None else peak
        if peak is None or self.total_tokens is None:
            raise RuntimeError(
                "WarmupStableDecay.lr_at needs the peak LR and total_tokens; they are "
                "resolved when training starts"
            )
        floor = self.floor(peak)
        if self.warmup_tokens and tokens < self.warmup_tokens:
            return peak * tokens / self.warmup_tokens
        decay_start = self.total_tokens - self.decay_tokens
        if self.decay_tokens == 0 or tokens <= decay_start:
            return peak
        return floor + (peak - floor) * decay_factor(self.decay, (tokens - decay_start) / self.decay_tokens)

    # --------------------------------------------------------------------------------------------- Lightning
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.total_tokens is None:
            budgets = [cb for cb in trainer.callbacks if isinstance(cb, TokenBudget)]
            if not budgets:
                raise ValueError(
                    "WarmupStableDecay: total_tokens is not set and there is no TokenBudget "
                    "callback to take it from; set total_tokens or add "
                    "ouro.callbacks.TokenBudget"
                )
            self.total_tokens = budgets[0].max_tokens
            self._check_total(self.total_tokens)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_lr is not None:  # restored from the checkpoint of this stage
            return
        peak = float(pl_module.optim.lr)
        if self.init_lr_from_previous:
            previous = pl_module.stage.previous_final_lr
            if previous is None:
                rank_zero_warn(
                    "WarmupStableDecay: init_lr_from_previous is set but the initialising "
                    f"checkpoint has no final LR; starting from optimizer.lr = {peak:g}"
                )
            elif isinstance(previous, bool) or not isinstance(previous, (int, float)) or previous <= 0:
                raise ValueError(
                    f"WarmupStableDecay: the previous stage's final LR must be a positive number, got {previous!r}"
                )
            else:
                peak = float(previous)
        self.peak_lr = peak

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        lr = self.lr_at(tokens_seen(pl_module))
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.last_lr = lr
        pl_module.log("lr", lr, on_step=True, on_epoch=False, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_lr": self.peak_lr, "last_lr": self.last_lr, "total_tokens": self.total_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.peak_lr = state_dict.get("peak_lr")
        self.last_lr = state_dict.get("last_lr")
        saved_total = state_dict.get("total_tokens")
        if saved_total is not None and self.total_tokens is not None and saved_total != self.total_tokens:
            rank_zero_warn(
                f"WarmupStableDecay: the checkpoint was trained with total_tokens={saved_total}, "
                f"the recipe now says {self.total_tokens}; the rest of the stage follows the new "
                "value"
            )
