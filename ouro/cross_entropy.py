"""The LM head's cross-entropy for every loop step, a block of rows at a time.

Two entry points, both holding at most ``chunk_size`` rows of logits at once (whatever T and the vocabulary):

* `per_step_cross_entropy` returns (tokens, steps) losses with ordinary autograd: backward recomputes each
  block's logits from the saved hidden states. Any loss may be built on it.
* `cross_entropy_with_known_gradient` is for losses that are linear in the cross-entropies with weights known
  before the cross-entropy is computed, as the Stage I loss is: dL/dCE_t(i) = p(t | i) m_i / N. It computes the
  gradients in the same pass as the losses, so each block's logits are computed once instead of twice: the
  LM head costs 3 matmuls per step instead of 4 (benchmarks/vs_litgpt.py measures the effect).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100
#: Largest block of rows the chunked cross-entropy processes at once on CPU (faster there than larger blocks).
CPU_MAX_CHUNK = 512


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden_states[t] @ weight.T`` for every step t, ``chunk`` rows at a time.

    Saves only its inputs and the per-row log-sum-exp; backward recomputes each chunk's logits, so peak extra
    memory is O(chunk x vocab) in both directions. Matmuls run in ``compute_dtype``, softmax in fp32. All steps
    go through one call so that the LM head is cast once and its gradient accumulates in one fp32 tensor. One
    fp32 logits buffer (plus one in ``compute_dtype`` when that is not fp32) is reused by every chunk and every
    elementwise step works in place: on CPU, fresh chunk x vocab tensors cost more in page faults than the
    arithmetic itself.
    """

    @staticmethod
    def forward(ctx, weight, targets, chunk: int, compute_dtype: torch.dtype, *hidden_states):
        tokens, vocab = targets.shape[0], weight.shape[0]
        w_t = weight.to(compute_dtype).t()
        losses = torch.empty(tokens, len(hidden_states), device=weight.device, dtype=torch.float32)
        lse_all = torch.empty_like(losses)
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        buffers = _LogitBuffers(min(chunk, tokens), vocab, compute_dtype, weight.device)
        for step, hidden in enumerate(hidden_states):
            for start in range(0, tokens, chunk):
                stop = min(start + chunk, tokens)
                block = _block_cross_entropy(
                    buffers,
                    hidden[start:stop].to(compute_dtype),
                    w_t,
                    safe_targets[start:stop],
                    valid[start:stop],
                )
                losses[start:stop, step], lse_all[start:stop, step] = block.losses, block.lse
        ctx.save_for_backward(weight, targets, lse_all, *hidden_states)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        weight, targets, lse_all, *hidden_states = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.compute_dtype
        tokens, vocab = targets.shape[0], weight.shape[0]
        w = weight.to(dtype)
        grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_weight = _GradWeight(weight, dtype)
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        scale_all = torch.where(valid[:, None], grad_losses.float(), 0.0)
        minus_one = torch.full((min(chunk, tokens), 1), -1.0, device=weight.device)
        buffers = _LogitBuffers(min(chunk, tokens), vocab, dtype, weight.device)
        grad_hidden_states = []
        for step, hidden in enumerate(hidden_states):
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[4 + step] else None
            for start in range(0, tokens, chunk):
                stop = min(start + chunk, tokens)
                h = hidden[start:stop].to(dtype)
                grad_logits = buffers.logits(h, w.t())
                grad_logits.sub_(lse_all[start:stop, step, None]).exp_()  # softmax
                grad_logits.scatter_add_(1, safe_targets[start:stop, None], minus_one[: stop - start])
                grad_logits.mul_(scale_all[start:stop, step, None])
                _backpropagate_block(
                    buffers.to_compute_dtype(grad_logits), w, h, grad_hidden, start, grad_weight
                )
            grad_hidden_states.append(grad_hidden)
        return (
            grad_weight.result() if grad_weight is not None else None,
            None,
            None,
            None,
            *grad_hidden_states,
        )


class _CrossEntropyWithKnownGradient(torch.autograd.Function):
    """Per-step cross-entropy (not differentiable) plus a zero scalar that carries the LM head's gradients.

    ``loss_grad`` (tokens, steps) is dL/dCE: forward turns each block's softmax straight into
    ``grad_logits = (softmax - onehot) * loss_grad`` and its two products with the hidden states and the LM head,
    so no logits are recomputed. Backward only scales the stored gradients by the carrier's incoming gradient
    (1, or 1 / accumulation steps, or a loss scale). It keeps the gradients (the size of the hidden states plus
    one fp32 LM head) from forward to backward instead of the hidden states.
    """

    @staticmethod
    def forward(ctx, weight, targets, loss_grad, chunk: int, compute_dtype: torch.dtype, *hidden_states):
        tokens, vocab = targets.shape[0], weight.shape[0]
        w = weight.to(compute_dtype)
        losses = torch.empty(tokens, len(hidden_states), device=weight.device, dtype=torch.float32)
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        scale_all = torch.where(valid[:, None], loss_grad.float(), 0.0)
        grad_weight = _GradWeight(weight, compute_dtype) if ctx.needs_input_grad[0] else None
        buffers = _LogitBuffers(min(chunk, tokens), vocab, compute_dtype, weight.device)
        grad_hidden_states = []
        for step, hidden in enumerate(hidden_states):
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[5 + step] else None
            for start in range(0, tokens, chunk):
                stop = min(start + chunk, tokens)
                h = hidden[start:stop].to(compute_dtype)
                block = _block_cross_entropy(buffers, h, w.t(), safe_targets[start:stop], valid[start:stop])
                losses[start:stop, step] = block.losses
                if grad_hidden is None and grad_weight is None:
                    continue
                row_scale = scale_all[start:stop, step]
                grad_logits = block.exp.mul_((row_scale / block.sum_exp)[:, None])  # softmax x dL/dCE
                grad_logits.scatter_add_(1, safe_targets[start:stop, None], -row_scale[:, None])
                _backpropagate_block(
                    buffers.to_compute_dtype(grad_logits), w, h, grad_hidden, start, grad_weight
                )
            grad_hidden_states.append(grad_hidden)
        ctx.grads = (grad_weight.result() if grad_weight is not None else None, grad_hidden_states)
        ctx.mark_non_differentiable(losses)
        return losses, losses.new_zeros(())

    @staticmethod
    def backward(ctx, grad_losses, grad_carrier):
        if ctx.grads is None:
            raise RuntimeError(
                "cross_entropy_with_known_gradient hands out its gradients once; "
                "backward through it twice (retain_graph) is not supported"
            )
        grad_weight, grad_hidden_states = ctx.grads
        ctx.grads = None
        scale = grad_carrier.float()
        grad_weight = grad_weight.mul_(scale) if grad_weight is not None else None
        grad_hidden_states = [g.mul_(scale) if g is not None else None for g in grad_hidden_states]
        return grad_weight, None, None, None, None, *grad_hidden_states


class _GradWeight:
    """fp32 accumulator of ``grad_logits.T @ h`` over chunks and steps.

    In fp32 the products go straight into it (``mm``/``addmm`` with ``out=``, which FlopCounterMode counts,
    unlike ``addmm_``). In a lower dtype each product goes through a (slice, hidden) buffer of that dtype, a
    vocabulary slice at a time, so that no second vocab x hidden tensor exists.
    """

    SLICE = 8192

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        self.dtype = weight.dtype
        self.total = torch.empty(weight.shape, device=weight.device, dtype=torch.float32)
        self.partial = (
            None
            if dtype == torch.float32
            else torch.empty(
                min(self.SLICE, weight.shape[0]), weight.shape[1], device=weight.device, dtype=dtype
            )
        )
        self.empty = True

    def accumulate(self, grad_logits: torch.Tensor, h: torch.Tensor) -> None:
        if self.partial is None:
            if self.empty:
                torch.mm(grad_logits.t(), h, out=self.total)
            else:
                torch.addmm(self.total, grad_logits.t(), h, out=self.total)
        else:
            for v0 in range(0, self.total.shape[0], self.SLICE):
                v1 = min(v0 + self.SLICE, self.total.shape[0])
                product = torch.mm(grad_logits[:, v0:v1].t(), h, out=self.partial[: v1 - v0])
                if self.empty:
                    self.total[v0:v1].copy_(product)
                else:
                    self.total[v0:v1].add_(product)
        self.empty = False

    def result(self) -> torch.Tensor:
        if self.empty:
            self.total.zero_()
        return self.total.to(self.dtype)


class _LogitBuffers:
    """Reusable (rows, vocab) buffers: fp32 for the softmax, and ``dtype`` for the matmuls when it differs."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.fp32 = torch.empty(rows, vocab, device=device, dtype=torch.float32)
        self.low = None if dtype == torch.float32 else torch.empty(rows, vocab, device=device, dtype=dtype)

    def logits(self, h: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
        """fp32 ``h @ w_t`` (rows, vocab) in the fp32 buffer; the product itself runs in ``h``'s dtype."""
        rows = h.shape[0]
        if self.low is None:
            return torch.mm(h, w_t, out=self.fp32[:rows])
        torch.mm(h, w_t, out=self.low[:rows])
        return self.fp32[:rows].copy_(self.low[:rows])

    def to_compute_dtype(self, values: torch.Tensor) -> torch.Tensor:
        if self.low is None:
            return values
        return self.low[: values.shape[0]].copy_(values)


class _Block(NamedTuple):
    losses: torch.Tensor  # (rows,) fp32, 0 where ignored
    lse: torch.Tensor  # (rows,) log-sum-exp of the logits
    exp: (
        torch.Tensor
    )  # (rows, vocab) exp(logits - row max), in the fp32 buffer (overwritten by the next block)
    sum_exp: torch.Tensor  # (rows,) row sums of ``exp``


def _block_cross_entropy(
    buffers: _LogitBuffers, h: torch.Tensor, w_t: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> _Block:
    """Cross-entropy of one block of rows, computed in place in the fp32 logits buffer."""
    logits = buffers.logits(h, w_t)
    row_max = logits.amax(dim=-1, keepdim=True)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    exp = logits.sub_(row_max).exp_()
    sum_exp = exp.sum(-1)
    lse = sum_exp.log().add_(row_max.squeeze(1))
    return _Block(torch.where(valid, lse - picked, 0.0), lse, exp, sum_exp)


def _backpropagate_block(
    grad_logits: torch.Tensor,
    w: torch.Tensor,
    h: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    start: int,
    grad_weight: _GradWeight | None,
) -> None:
    """Writes one block's ``grad_logits @ w`` into ``grad_hidden[start:]`` and adds ``grad_logits.T @ h``."""
    if grad_hidden is not None:
        grad_hidden[start : start + grad_logits.shape[0]] = (grad_logits @ w).to(grad_hidden.dtype)
    if grad_weight is not None:
        grad_weight.accumulate(grad_logits, h)


def _block_and_dtype(
    hidden_states: list[torch.Tensor], weight: torch.Tensor, targets: torch.Tensor, chunk_size: int
) -> tuple[int, torch.dtype]:
    """Checks the shapes; returns the block size to use and the matmul dtype (the autocast dtype if active)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for h in hidden_states:
        if h.shape != (targets.shape[0], weight.shape[1]):
            raise ValueError(
                f"hidden state of shape {tuple(h.shape)} does not match {targets.shape[0]} targets "
                f"and an LM head of width {weight.shape[1]}"
            )
    device_type = weight.device.type
    if device_type == "cpu":
        # Measured on the `bench` preset: 512-row blocks run the loss 1.5x faster than one 2048-row block, as
        # the elementwise softmax passes stay in cache. Smaller blocks only lower the memory bound.
        chunk_size = min(chunk_size, CPU_MAX_CHUNK)
    if torch.is_autocast_enabled(device_type):
        return chunk_size, torch.get_autocast_dtype(device_type)
    return chunk_size, torch.promote_types(hidden_states[0].dtype, weight.dtype)


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """Per-token cross-entropy (fp32, 0 where ``targets == -100``) of the logits ``hidden @ weight.T``.

    ``hidden`` (tokens, hidden), ``weight`` (vocab, hidden) (the LM head), ``targets`` (tokens,); see
    `per_step_cross_entropy`.
    """
    return per_step_cross_entropy([hidden], weight, targets, chunk_size)[:, 0]


def per_step_cross_entropy(
    hidden_states: list[torch.Tensor],
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Cross-entropy of every step: (tokens, steps), fp32, 0 where ``targets == -100``.

    ``hidden_states[t]`` is (tokens, hidden), ``lm_head_weight`` (vocab, hidden), ``targets`` (tokens,). Under
    autocast the matmuls use the autocast dtype, as the LM head itself would. At most ``chunk_size`` rows of
    logits exist at once (at most ``CPU_MAX_CHUNK`` on CPU), whatever the number of steps.
    """
    chunk_size, dtype = _block_and_dtype(hidden_states, lm_head_weight, targets, chunk_size)
    with torch.autocast(device_type=lm_head_weight.device.type, enabled=False):
        return _ChunkedCrossEntropy.apply(lm_head_weight, targets, chunk_size, dtype, *hidden_states)


def cross_entropy_with_known_gradient(
    hidden_states: list[torch.Tensor],
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    loss_grad: torch.Tensor,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step cross-entropy for a loss whose gradient with respect to it, ``loss_grad``, is known beforehand.

    Returns ``(ce, carrier)``: ``ce`` (tokens, steps) as `per_step_cross_entropy` computes it but without
    gradient, and a zero scalar to add to the loss. Backpropagating through the carrier gives the hidden states
    and the LM head the gradient of ``(loss_grad * ce).sum()``, scaled by the carrier's incoming gradient. The
    caller must therefore build its loss from ``ce`` (detached) so that its true gradient with respect to the
    cross-entropies is ``loss_grad``; `ouro.objective.stage1_loss_from_hidden` is the one such caller.
    """
    chunk_size, dtype = _block_and_dtype(hidden_states, lm_head_weight, targets, chunk_size)
    if loss_grad.shape != (targets.shape[0], len(hidden_states)):
        raise ValueError(
            f"loss_grad of shape {tuple(loss_grad.shape)} should be ({targets.shape[0]}, "
            f"{len(hidden_states)}): tokens x steps"
        )
    with torch.autocast(device_type=lm_head_weight.device.type, enabled=False):
        return _CrossEntropyWithKnownGradient.apply(
            lm_head_weight, targets, loss_grad.detach(), chunk_size, dtype, *hidden_states
        )
