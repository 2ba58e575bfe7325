"""FlashAttention as the plan costs it: a custom op with a fake (shape-only) implementation.

On the GPU, training runs flash-attn: it saves the output and a (batch, heads, seq) log-sum-exp, so attention's
memory grows with the sequence, not with its square. The CPU stand-in (SDPA) may pick a kernel that holds a
seq x seq score matrix, which would make a 64K plan wrong by orders of magnitude. `gpu_attention` routes the
model's attention through ``ouro_plan::flash_attention`` instead, whose fake implementation allocates exactly what
flash-attn allocates (forward: output and log-sum-exp; backward: the three gradients plus the fp32 ``dq``
accumulator and the softmax row sums), and whose FLOPs are registered with ``FlopCounterMode`` (causal: half the
score matrix; backward twice the forward). Its real implementation computes the same attention with plain ops,
so the op can be checked against SDPA on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from torch.utils.flop_counter import register_flop_formula

from ouro.model import attention as attention_module


@torch.library.custom_op("ouro_plan::flash_attention", mutates_args=())
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of q (batch, seq, heads, dim) over k, v (batch, seq, kv_heads, dim), laid out as
    flash-attn takes them. Returns the output (batch, seq, heads, dim) and the log-sum-exp (batch, heads, seq)."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    groups = qh.shape[1] // kh.shape[1]
    kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    seq = q.shape[1]
    scores = (qh.float() @ kh.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    lse = scores.logsumexp(-1)
    out = (scores - lse[..., None]).exp() @ vh.float()
    return out.to(q.dtype).transpose(1, 2).contiguous(), lse


@flash_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, seq), dtype=torch.float32)


@torch.library.custom_op("ouro_plan::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `flash_attention` with respect to q, k and v from the saved output and log-sum-exp (the
    probabilities are recomputed, as flash-attn does)."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    groups = qh.shape[1] // kh.shape[1]
    kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    grad, oh = grad_out.transpose(1, 2).float(), out.transpose(1, 2).float()
    scale, seq = q.shape[-1] ** -0.5, q.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    scores = (qh @ kh.transpose(-1, -2)) * scale
    probs = (scores - lse[..., None]).exp().masked_fill(~causal, 0.0)
    grad_v = probs.transpose(-1, -2) @ grad
    grad_scores = probs * (grad @ vh.transpose(-1, -2) - (grad * oh).sum(-1, keepdim=True)) * scale
    grad_q = grad_scores @ kh
    grad_k = grad_scores.transpose(-1, -2) @ qh

    def per_kv_head(t: torch.Tensor) -> torch.Tensor:  # sum the query-head groups that shared a kv head
        batch, heads, length, dim = t.shape
        return t.view(batch, heads // groups, groups, length, dim).sum(2)

    return (
        grad_q.transpose(1, 2).to(q.dtype).contiguous(),
        per_kv_head(grad_k).transpose(1, 2).to(k.dtype).contiguous(),
        per_kv_head(grad_v).transpose(1, 2).to(v.dtype).contiguous(),
    )


@flash_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse):  # noqa: ANN001, ANN202
    batch, seq, heads, dim = q.shape
    # flash-attn's backward workspace: an fp32 dq accumulator and the softmax row sums (freed on return).
    q.new_empty((batch, seq, heads, dim), dtype=torch.float32)
    q.new_empty((batch, heads, seq), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs, *output)  # q, k, v, out, lse: what flash-attn keeps for backward


def _backward(ctx, grad_out, grad_lse):  # noqa: ANN001, ANN202
    return flash_attention_backward(grad_out, *ctx.saved_tensors)


flash_attention.register_autograd(_backward, setup_context=_setup_context)


def causal_attention_flops(batch: int, seq: int, heads: int, dim: int) -> int:
    """Matmul FLOPs of causal attention's forward: QK^T and AV over half the score matrix (2 FLOPs a MAC)."""
    return 2 * 2 * batch * heads * seq * seq * dim // 2


@register_flop_formula(torch.ops.ouro_plan.flash_attention)
def _forward_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:  # noqa: ANN001
    batch, seq, heads, dim = q_shape
    return causal_attention_flops(batch, seq, heads, dim)


@register_flop_formula(torch.ops.ouro_plan.flash_attention_backward)
def _backward_flops(grad_shape, q_shape, *args, **kwargs) -> int:  # noqa: ANN001
    batch, seq, heads, dim = q_shape
    return 2 * causal_attention_flops(batch, seq, heads, dim)


def _planned_flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: attention_module.AttentionLayout,
    dropout: float,
) -> torch.Tensor:
    return flash_attention(q, k, v)[0]


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """While open, every training forward's attention (no KV cache) runs `flash_attention`, as the GPU runs
    flash-attn. Packed documents are ignored: flash-attn's varlen kernel costs the same memory, and at most the
    same FLOPs."""
    with (
        mock.patch.object(attention_module.Attention, "_use_flash", staticmethod(lambda q, layout: True)),
        mock.patch.object(attention_module, "_flash_attention", _planned_flash),
    ):
        yield
