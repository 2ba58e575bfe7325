"""Causal self-attention with document masking and two backends.

* ``flash``: flash-attn's varlen kernel on CUDA in bf16/fp16; packed documents are separated by ``cu_seqlens``.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` everywhere else; packed documents are separated
  by an explicit boolean mask (causal and same-document).

Both give every token exactly the context it would have if its document were alone in the sequence. Positions
restart at 0 at every document start, so a document's logits do not depend on what was packed before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ouro.model.layers import apply_rope

BACKENDS = ("auto", "sdpa", "flash")


class KVCacheLike(Protocol):
    """What attention needs of a KV cache: store this pass/layer's new keys and values, return all of them."""

    def update(
        self, step: int, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """True when the flash-attn package can be imported (it needs CUDA)."""
    try:
        import flash_attn  # noqa: F401 (optional dependency, CUDA only)
    except Exception:
        return False
    return True


@dataclass
class AttentionLayout:
    """Everything attention needs about token positions, built once per forward and shared by all passes.

    ``positions`` (batch, seq) feed RoPE. ``doc_ids`` (batch, seq) number the documents packed in each row
    (None: each row is one document). ``mask`` is an explicit boolean (batch, 1, q_len, kv_len) mask (True = may
    attend) used by generation with a KV cache; for training it is derived from ``doc_ids`` on first use.
    """

    positions: torch.Tensor
    doc_ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    backend: str = "auto"
    #: Whether flash-attn can be imported, read here once so that compiled layers never trace the check.
    flash_installed: bool = field(default_factory=flash_attn_available)
    _varlen: tuple[torch.Tensor, int] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None, backend: str = "auto"
    ) -> AttentionLayout:
        """Layout for a training/scoring forward over ``input_ids`` (batch, seq), documents from ``doc_ids``."""
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        batch, seq = input_ids.shape
        index = torch.arange(seq, device=input_ids.device)
        if doc_ids is None:
            return cls(positions=index.expand(batch, seq), backend=backend)
        if doc_ids.shape != input_ids.shape:
            raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)}, expected {tuple(input_ids.shape)}")
        starts = _document_starts(doc_ids)
        start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        layout = cls(positions=index - start_index, doc_ids=doc_ids, backend=backend)
        if backend != "sdpa" and input_ids.is_cuda and layout.flash_installed:
            # Computed here, outside the (compiled, checkpointed) layers: its data-dependent shape would split a
            # compiled layer in two, and a layer recomputed in backward would then save other tensors.
            layout.varlen()
        return layout

    def sdpa_mask(self) -> torch.Tensor | None:
        """Boolean (batch, 1, seq, seq) causal same-document mask, or None for plain causal attention."""
        if self.mask is None and self.doc_ids is not None:
            seq = self.doc_ids.shape[1]
            causal = torch.ones(seq, seq, dtype=torch.bool, device=self.doc_ids.device).tril()
            self.mask = ((self.doc_ids[:, :, None] == self.doc_ids[:, None, :]) & causal)[:, None]
        return self.mask

    def varlen(self) -> tuple[torch.Tensor, int]:
        """``(cu_seqlens, max_seqlen)`` of the packed documents over the flattened batch (flash-attn varlen)."""
        if self._varlen is None:
            batch, seq = self.doc_ids.shape
            flat_starts = _document_starts(self.doc_ids).flatten().nonzero().flatten()
            total = torch.tensor([batch * seq], device=self.doc_ids.device)
            cu_seqlens = torch.cat([flat_starts, total]).to(torch.int32)
            self._varlen = (cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max()))
        return self._varlen


def _document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts


class Attention(nn.Module):
    """Multi-head / grouped-query attention with RoPE; projections named as in the official checkpoint."""

    def __init__(
        self, hidden_size: int, num_heads: int, num_kv_heads: int, layer_idx: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.layer_idx = layer_idx
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        step: int = 0,
        cache: KVCacheLike | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if cache is None and self._use_flash(q, layout):
            out = _flash_attention(q, k, v, layout, dropout)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if cache is not None:
                k, v = cache.update(step, self.layer_idx, k, v)
            out = _sdpa_attention(q, k, v, layout.sdpa_mask(), dropout, cached=cache is not None)
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim))

    @staticmethod
    def _use_flash(q: torch.Tensor, layout: AttentionLayout) -> bool:
        if layout.backend == "sdpa":
            return False
        ok = (
            q.is_cuda
            and q.dtype in (torch.bfloat16, torch.float16)
            and layout.mask is None
            and layout.flash_installed
        )
        if layout.backend == "flash" and not ok:
            raise RuntimeError(
                "attention backend 'flash' needs flash-attn installed (pip install 'ouro[flash]'), "
                "a CUDA device and bf16/fp16 activations; use backend 'auto' or 'sdpa' instead"
            )
        return ok


def _sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    cached: bool = False,
) -> torch.Tensor:
    """q (batch, heads, q_len, dim), k/v (batch, kv_heads, kv_len, dim); ``cached``: k/v hold earlier tokens."""
    gqa = k.shape[1] != q.shape[1]
    if mask is None:
        # Plain causal attention; with a cache of earlier tokens the queries are the last q_len positions.
        # Without a cache q and k cover the same tokens: a plain bool, so a compiled layer whose sequence length
        # is dynamic (it changed mid-stage) does not break its graph on a symbolic comparison here.
        causal = not cached or q.shape[2] == k.shape[2]
        if not causal:
            q_len, kv_len = q.shape[2], k.shape[2]
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, enable_gqa=gqa
        )
    if gqa:
        # SDPA's memory-efficient kernel (the one that takes a mask) has no GQA support; with enable_gqa and a mask
        # it would fall back to the math kernel, which materialises batch x heads x seq x seq scores.
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def _flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, dropout: float
) -> torch.Tensor:
    """q/k/v (batch, seq, heads, dim) through flash-attn; varlen when documents are packed."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func  # optional dependency (CUDA only)

    batch, seq = q.shape[:2]
    if layout.doc_ids is None:
        return flash_attn_func(q, k, v, dropout_p=dropout, causal=True)
    cu_seqlens, max_seqlen = layout.varlen()
    out = flash_attn_varlen_func(
        q.reshape(batch * seq, *q.shape[2:]),
        k.reshape(batch * seq, *k.shape[2:]),
        v.reshape(batch * seq, *v.shape[2:]),
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        dropout_p=dropout,
        causal=True,
    )
    return out.view(batch, seq, *out.shape[1:])
