"""Long-context schedule: a stage's RoPE base and sequence length, with an optional length warm-up."""

from __future__ import annotations

from numbers import Real
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ouro.callbacks.schedule import Piecewise, check_token_count, tokens_seen
from ouro.data.base import OuroDataModule


def schedule_control(target: Any, method: str, owner: str) -> Any:
    """``target.<method>``, the explicit setter a schedule changes the run through, or a TypeError naming it."""
    # Schedules also steer modules and data other than OuroLM / OuroDataModule that give the same setter.
    setter = getattr(target, method, None)
    if not callable(setter):
        raise TypeError(
            f"{owner} needs {type(target).__name__}.{method}(); use ouro.module.OuroLM and an ouro DataModule "
            f"(or give yours a {method} method), or drop the setting from {owner}"
        )
    return setter


def split_rows(batch: dict[str, Any], seq_len: int) -> None:
    """Cut every row of a batch into rows of ``seq_len`` tokens, in place (same tokens, shorter context).

    Labels stay aligned (each row's last label is the next row's first input) and ``doc_ids`` stay
    non-decreasing per row; positions restart at each new row like at any block boundary.
    """
    for key in ("input_ids", "labels", "doc_ids"):
        tensor = batch.get(key)
        if tensor is not None:
            batch[key] = tensor.reshape(-1, seq_len)


class LongContextSchedule(L.Callback):
    """Set the stage's RoPE base and sequence length, optionally warming the length up gradually.

    ``rope_theta`` is set through ``pl_module.set_rope_base`` (read at every forward) at fit start and whenever
    its schedule changes; paper: 10K (stages 1a/1b), 40K (CT annealing), 1M (LongCT onwards). ``seq_len`` is set
    through ``trainer.datamodule.set_seq_len`` before the loaders are built (paper: 4K -> 16K -> 64K -> 32K).

    Gradual length warm-up (``warmup``) keeps the loader at the full ``seq_len`` and, while a shorter length
    is in force, cuts each row of the batch into rows of that length before the forward. The tokens, the batch
    in tokens and the data-loader position are those of the full-length run, so resume stays exact; only the
    context is shorter. (Changing the loader's own block size mid-stage would need a loader rebuild, and
    litdata refuses to resume a loader whose block size changed.)
    """

    def __init__(
        self,
        rope_theta: float | list[tuple[int, float]] | None = None,
        seq_len: int | None = None,
        warmup: list[tuple[int, int]] | None = None,
    ) -> None:
        """
        Args:
            rope_theta: RoPE base for the whole stage, or ``[[tokens, base], ...]`` changing at those token
                counts (first entry at 0). None keeps the model's ``rope_theta``.
            seq_len: Sequence length of the stage, set with ``trainer.datamodule.set_seq_len``. None keeps the
                datamodule's.
            warmup: ``[[tokens, length], ...]``: from each token count on, train on rows of ``length`` tokens;
                first entry at 0, lengths increase, divide ``seq_len`` and end with ``seq_len`` itself.
        """
        name = type(self).__name__
        if rope_theta is None or isinstance(rope_theta, list):
            self.rope_theta = (
                None
                if rope_theta is None
                else Piecewise(name, "rope_theta", rope_theta, float, 0, exclusive_minimum=True)
            )
        elif isinstance(rope_theta, Real) and not isinstance(rope_theta, bool) and rope_theta > 0:
            self.rope_theta = Piecewise(name, "rope_theta", [(0, float(rope_theta))])
        else:
            raise ValueError(
                f"{name}: rope_theta must be a positive number or a list of [tokens, base] "
                f"pairs, got {rope_theta!r}"
            )
        self.seq_len = None if seq_len is None else check_token_count(name, "seq_len", seq_len, 1)
        self.warmup = None if warmup is None else Piecewise(name, "warmup", warmup, int, 1)
        if self.warmup is not None and self.seq_len is not None:
            self._check_warmup(self.seq_len)
        self._applied_theta: float | None = None
        self._trainer: L.Trainer | None = None

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def _check_warmup(self, full: int) -> None:
        lengths = self.warmup.values
        for i, length in enumerate(lengths):
            if full % length:
                raise ValueError(
                    f"LongContextSchedule: warmup[{i}] length {length} does not divide seq_len "
                    f"{full}; use lengths that divide the stage's sequence length"
                )
            if i and length <= lengths[i - 1]:
                raise ValueError(
                    f"LongContextSchedule: warmup lengths must increase, got {length} after {lengths[i - 1]}"
                )
        if lengths[-1] != full:
            raise ValueError(
                f"LongContextSchedule: the last warmup entry must be the full seq_len ({full}), "
                f"got {lengths[-1]}; add [tokens, {full}] where the warm-up ends"
            )

    def rope_theta_at(self, tokens: int) -> float | None:
        return None if self.rope_theta is None else self.rope_theta(tokens)

    def seq_len_at(self, tokens: int, full: int) -> int:
        """Row length trained on after ``tokens`` tokens when the loader yields rows of ``full`` tokens."""
        return full if self.warmup is None else self.warmup(tokens)

    # --------------------------------------------------------------------------------------------- Lightning
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if self.seq_len is not None:
            datamodule = trainer.datamodule
            if not isinstance(datamodule, OuroDataModule):
                raise ValueError(
                    f"LongContextSchedule: seq_len is set but the data ({type(datamodule).__name__}) is not an "
                    "ouro DataModule with `set_seq_len`; use one (ouro.data.OuroDataModule) or drop seq_len "
                    "from the callback"
                )
            if datamodule.seq_len != self.seq_len:
                rank_zero_info(f"LongContextSchedule: data seq_len {datamodule.seq_len} -> {self.seq_len}")
                datamodule.set_seq_len(self.seq_len)
        elif self.warmup is not None:
            datamodule = trainer.datamodule
            full = datamodule.seq_len if isinstance(datamodule, OuroDataModule) else None
            if full is None:
                raise ValueError(
                    "LongContextSchedule: warmup needs the stage's seq_len; set seq_len on the callback"
                )
            self._check_warmup(full)
        self._apply_theta(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_theta(pl_module)  # tokens_seen is restored by now (except strategies that restore later)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_theta(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply_theta(pl_module)
        if self._applied_theta is not None:
            pl_module.log(
                "train/rope_theta", self._applied_theta, on_step=True, on_epoch=False, rank_zero_only=True
            )
        if self.warmup is not None:
            full = batch["input_ids"].shape[1]
            length = self.seq_len_at(tokens_seen(pl_module), full)
            if length != full:
                if full % length:
                    raise ValueError(
                        f"LongContextSchedule: warm-up length {length} does not divide the "
                        f"batch's sequence length {full}"
                    )
                split_rows(batch, length)
            pl_module.log("train/seq_len", float(length), on_step=True, on_epoch=False, rank_zero_only=True)

    def _apply_theta(self, pl_module: L.LightningModule) -> None:
        theta = self.rope_theta_at(tokens_seen(pl_module))
        if theta is not None:  # set every time: stage initialisation may have changed the config meanwhile
            schedule_control(pl_module, "set_rope_base", type(self).__name__)(theta)
            self._applied_theta = theta

    def state_dict(self) -> dict[str, Any]:
        return {"rope_theta": self._applied_theta, "seq_len": self.seq_len}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The values are functions of the restored tokens_seen and are re-applied before the next forward.
        self._applied_theta = state_dict.get("rope_theta")
