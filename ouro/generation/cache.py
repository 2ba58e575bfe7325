"""KV cache for generation with a looped model: slots per (pass, layer), early exit and KV sharing.

Storage is preallocated for ``capacity`` columns (prompt + new tokens), one column per position of the
left-padded batch. ``sharing`` chooses what is kept:

* ``full``: one slot per (pass, layer): T x layers slots. Exact: decoding equals a full forward.
* ``last``: one slot per layer holding, for every position, the keys/values of the **last pass that ran** there
  (pass T-1, or the exit pass of a token that exited early). 1/T of the memory of ``full``.
* ``mean``: one slot per layer holding the **mean** over the passes that ran at that position. 1/T of ``full``.

Within the passes of the tokens being processed, each pass attends to the stored columns before them plus its
own pass's keys/values (prefill therefore still uses every pass's own cache, paper §4 / docs/model.md §4).

Early exit under ``full`` sharing: a token that exits after pass m never runs passes m+1..T-1; its column in
those passes' slots receives a **copy of pass m's keys/values**, so later tokens that run deeper read the deepest
representation that exists for that position (the same rule ``last`` applies to every position).
"""

from __future__ import annotations

import torch

from ouro.config import OuroConfig

SHARING_MODES = ("full", "last", "mean")


class LoopKVCache:
    """Preallocated per-(pass, layer) cache with KV sharing; see the module docstring.

    The generator drives it: ``begin(start, length)`` before the passes over columns ``start:start+length``,
    ``rows`` (global batch rows, or None for all) before each pass, ``commit(exit_steps)`` afterwards.
    Attention calls ``update(step, layer, k, v)``.
    """

    def __init__(
        self,
        config: OuroConfig,
        batch_size: int,
        capacity: int,
        sharing: str = "full",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        num_steps: int | None = None,
    ) -> None:
        if sharing not in SHARING_MODES:
            raise ValueError(f"kv_sharing must be one of {SHARING_MODES}, got {sharing!r}")
        self.sharing = sharing
        self.num_steps = config.total_ut_steps if num_steps is None else num_steps
        self.num_layers = config.num_hidden_layers
        slots = self.num_steps * self.num_layers if sharing == "full" else self.num_layers
        shape = (slots, batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0
        self.rows: torch.Tensor | None = None
        self._span = (0, 0)
        self._sum: tuple[torch.Tensor, torch.Tensor] | None = None
        self._count: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored keys and values."""
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def slot(self, step: int, layer: int) -> int:
        return step * self.num_layers + layer if self.sharing == "full" else layer

    # ---------------------------------------------------------------------------------------------- protocol
    def begin(self, start: int, length: int) -> None:
        """The next passes process columns ``start:start+length``."""
        if start + length > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; {start + length} are needed")
        self._span = (start, start + length)
        self.rows = None
        if self.sharing == "mean":
            batch, heads, dim = self.keys.shape[1], self.keys.shape[2], self.keys.shape[4]
            shape = (self.num_layers, batch, heads, length, dim)
            self._sum = (
                torch.zeros(shape, dtype=torch.float32, device=self.keys.device),
                torch.zeros(shape, dtype=torch.float32, device=self.keys.device),
            )
            self._count = torch.zeros(batch, dtype=torch.float32, device=self.keys.device)

    def update(
        self, step: int, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's keys/values (batch rows ``self.rows``) and return everything they attend to."""
        start, end = self._span
        slot, rows = self.slot(step, layer), self.rows
        if rows is None:
            self.keys[slot, :, :, start:end] = key
            self.values[slot, :, :, start:end] = value
        else:
            self.keys[slot][rows, :, start:end] = key
            self.values[slot][rows, :, start:end] = value
        if self.sharing == "mean":
            index = slice(None) if rows is None else rows
            self._sum[0][layer, index] += key.float()
            self._sum[1][layer, index] += value.float()
            if layer == 0:
                self._count[index] += 1
        if rows is None:
            return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]
        return self.keys[slot][rows, :, :end], self.values[slot][rows, :, :end]

    def commit(self, exit_steps: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> None:
        """Finish the columns of ``begin``. ``exit_steps`` (for ``rows``, default all) is the last pass each row
        ran; under ``full`` sharing the later passes' slots get a copy of that pass's keys/values."""
        start, end = self._span
        if self.sharing == "full" and exit_steps is not None:
            keys = self.keys.view(self.num_steps, self.num_layers, *self.keys.shape[1:])
            values = self.values.view(self.num_steps, self.num_layers, *self.values.shape[1:])
            exits = exit_steps.tolist()
            for m in sorted(set(exits)):
                if m >= self.num_steps - 1:
                    continue
                if rows is None and len(set(exits)) == 1:  # every row exited at m: plain slices, no gather
                    keys[m + 1 :, :, :, :, start:end] = keys[m, :, :, :, start:end]
                    values[m + 1 :, :, :, :, start:end] = values[m, :, :, :, start:end]
                    continue
                all_rows = torch.arange(keys.shape[2], device=keys.device) if rows is None else rows
                chosen = all_rows[exit_steps == m]
                keys[m + 1 :][:, :, chosen, :, start:end] = keys[m][:, chosen, :, start:end].unsqueeze(0)
                values[m + 1 :][:, :, chosen, :, start:end] = values[m][:, chosen, :, start:end].unsqueeze(0)
        if self.sharing == "mean":
            count = self._count.clamp(min=1)[None, :, None, None, None]
            done = self._count > 0
            mean_k = (self._sum[0] / count).to(self.keys.dtype)
            mean_v = (self._sum[1] / count).to(self.values.dtype)
            self.keys[:, done, :, start:end] = mean_k[:, done]
            self.values[:, done, :, start:end] = mean_v[:, done]
            self._sum = self._count = None
        self.length = max(self.length, end)
        self.rows = None
