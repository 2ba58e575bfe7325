"""The LoopLM training objective (paper §3; ../shared/OURO.md §3).

Exit distribution (survival form), T steps, λ_t = sigmoid(gate logit after pass t):
    p(t) = λ_t Π_{j<t} (1 - λ_j)  for t < T,     p(T) = Π_{j<T} (1 - λ_j).
Stage I (pre-training, jointly with the LM), per token:  Σ_t p(t) L(t) - β H(p),  averaged over tokens.
Stage II (gate only, LM frozen), with detached per-token losses:
    I(t) = max(0, L(t-1) - L(t)),  w(t) = sigmoid(k (I(t) - γ)),
    L_gate(t) = -mean_i [w log(1 - λ_t) + (1 - w) log λ_t],  L_gate = (1/T) Σ_{t=2..T} L_gate(t).
Per-step cross-entropies come from `per_step_cross_entropy`, which never holds more than ``chunk_size`` rows of
logits: memory grows with the chunk, not with T x tokens x vocab (benchmarks/loss_memory.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
#: Largest block of rows the chunked cross-entropy processes at once on CPU (faster there than larger blocks).
CPU_MAX_CHUNK = 512


# ----------------------------------------------------------------------------------------- exit distribution
def exit_log_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """log p(t) over the last dimension (steps), computed stably from gate logits with log-sigmoids."""
    log_exit = F.logsigmoid(gate_logits.float())         # log λ_t
    log_stay = F.logsigmoid(-gate_logits.float())        # log (1 - λ_t)
    survive = torch.cumsum(log_stay, dim=-1) - log_stay  # Σ_{j<t} log(1 - λ_j)
    log_p = survive + log_exit
    return torch.cat([log_p[..., :-1], survive[..., -1:]], dim=-1)  # the last step takes what is left


def exit_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """p(t) over the last dimension (steps); sums to 1."""
    return exit_log_distribution(gate_logits).exp()


def q_exit_steps(exit_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """0-based exit step per token: the first step whose CDF reaches ``threshold`` (q = 1 → the last step)."""
    steps = exit_probs.shape[-1]
    if threshold >= 1.0:
        return torch.full(exit_probs.shape[:-1], steps - 1, dtype=torch.long, device=exit_probs.device)
    reached = exit_probs.cumsum(-1) >= threshold
    reached[..., -1] = True
    return reached.float().argmax(-1)


# ----------------------------------------------------------------------------------- chunked cross-entropy
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
                logits = buffers.logits(hidden[start:stop].to(compute_dtype), w_t)
                row_max = logits.amax(dim=-1, keepdim=True)
                picked = logits.gather(1, safe_targets[start:stop, None]).squeeze(1)
                lse = logits.sub_(row_max).exp_().sum(-1).log_().add_(row_max.squeeze(1))
                losses[start:stop, step] = torch.where(valid[start:stop], lse - picked, 0.0)
                lse_all[start:stop, step] = lse
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
                grad_logits.scatter_add_(1, safe_targets[start:stop, None], minus_one[:stop - start])
                grad_logits.mul_(scale_all[start:stop, step, None])
                grad_logits = buffers.to_compute_dtype(grad_logits)
                if grad_hidden is not None:
                    grad_hidden[start:stop] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.accumulate(grad_logits, h)
            grad_hidden_states.append(grad_hidden)
        return (grad_weight.result() if grad_weight is not None else None, None, None, None,
                *grad_hidden_states)


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
        self.partial = None if dtype == torch.float32 else \
            torch.empty(min(self.SLICE, weight.shape[0]), weight.shape[1], device=weight.device, dtype=dtype)
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
                product = torch.mm(grad_logits[:, v0:v1].t(), h, out=self.partial[:v1 - v0])
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
        return self.low[:values.shape[0]].copy_(values)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int = 4096) -> torch.Tensor:
    """Per-token cross-entropy (fp32, 0 where ``targets == -100``) of the logits ``hidden @ weight.T``.

    ``hidden`` (tokens, hidden), ``weight`` (vocab, hidden) (the LM head), ``targets`` (tokens,); see
    `per_step_cross_entropy`.
    """
    return per_step_cross_entropy([hidden], weight, targets, chunk_size)[:, 0]


def per_step_cross_entropy(hidden_states: list[torch.Tensor], lm_head_weight: torch.Tensor, targets: torch.Tensor,
                           chunk_size: int = 4096) -> torch.Tensor:
    """Cross-entropy of every step: (tokens, steps), fp32, 0 where ``targets == -100``.

    ``hidden_states[t]`` is (tokens, hidden), ``lm_head_weight`` (vocab, hidden), ``targets`` (tokens,). Under
    autocast the matmuls use the autocast dtype, as the LM head itself would. At most ``chunk_size`` rows of
    logits exist at once (at most ``CPU_MAX_CHUNK`` on CPU), whatever the number of steps.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    weight = lm_head_weight
    device_type = weight.device.type
    if device_type == "cpu":
        # Measured on the `bench` preset: 512-row blocks run the loss 1.5x faster than one 2048-row block, as
        # the elementwise softmax passes stay in cache. Smaller blocks only lower the memory bound.
        chunk_size = min(chunk_size, CPU_MAX_CHUNK)
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden_states[0].dtype, weight.dtype)
    for h in hidden_states:
        if h.shape != (targets.shape[0], weight.shape[1]):
            raise ValueError(f"hidden state of shape {tuple(h.shape)} does not match {targets.shape[0]} targets "
                             f"and an LM head of width {weight.shape[1]}")
    with torch.autocast(device_type=device_type, enabled=False):
        return _ChunkedCrossEntropy.apply(weight, targets, chunk_size, dtype, *hidden_states)


# ------------------------------------------------------------------------------------------------- losses
@dataclass
class LoopLoss:
    """A loss with the statistics worth logging; all statistics are detached means over counted tokens."""

    loss: torch.Tensor
    ce_per_step: torch.Tensor      # (steps,) mean cross-entropy of each step
    exit_probs: torch.Tensor       # (steps,) mean p(t)
    expected_step: torch.Tensor    # mean Σ_t t p(t), 1-based
    entropy: torch.Tensor          # mean H(p)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens (dim 0) where mask is true; works for (tokens,) and (tokens, steps)."""
    weights = mask.to(values.dtype)
    if values.dim() > 1:
        weights = weights[:, None]
    return (values * weights).sum(0) / mask.sum().clamp(min=1)


def _stats(ce: torch.Tensor, log_p: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    p = log_p.exp()
    steps = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
    entropy = -(p * log_p).sum(-1)
    return dict(ce_per_step=_masked_mean(ce, mask).detach(), exit_probs=_masked_mean(p, mask).detach(),
                expected_step=_masked_mean((p * steps).sum(-1), mask).detach(),
                entropy=_masked_mean(entropy, mask).detach())


def stage1_loss(ce: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor, beta: float) -> LoopLoss:
    """Entropy-regularised expected loss: mean over tokens of ``Σ_t p(t) L(t) - β H(p)``.

    ``ce`` (tokens, steps) per-step cross-entropy, ``gate_logits`` (tokens, steps), ``mask`` (tokens,) the
    tokens that count.
    """
    log_p = exit_log_distribution(gate_logits)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)
    per_token = (p * ce).sum(-1) - beta * entropy
    return LoopLoss(loss=_masked_mean(per_token, mask), **_stats(ce.detach(), log_p.detach(), mask))


def stage2_gate_loss(ce: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor, k: float = 50.0,
                     gamma: float = 0.005) -> LoopLoss:
    """Focused adaptive gate loss of Stage II; ``ce`` is detached here (only the gate learns).

    For t = 2..T: I(t) = max(0, L(t-1) - L(t)), w(t) = sigmoid(k (I(t) - γ)) and the binary cross-entropy
    ``-[w log(1 - λ_t) + (1 - w) log λ_t]`` averaged over tokens, then over the T - 1 steps.
    """
    ce = ce.detach().float()
    steps = ce.shape[-1]
    if steps < 2:
        raise ValueError("Stage II gate training needs at least 2 recurrent steps")
    improvement = (ce[:, :-1] - ce[:, 1:]).clamp(min=0)      # I(t), t = 2..T
    target_continue = torch.sigmoid(k * (improvement - gamma))  # w(t)
    z = gate_logits[:, 1:].float()
    bce = -(target_continue * F.logsigmoid(-z) + (1 - target_continue) * F.logsigmoid(z))
    loss = _masked_mean(bce, mask).mean()
    return LoopLoss(loss=loss, **_stats(ce, exit_log_distribution(gate_logits.detach()), mask))


def q_exit_cross_entropy(ce: torch.Tensor, exit_probs: torch.Tensor, mask: torch.Tensor, threshold: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and mean 1-based depth when every token exits by Q-exit at ``threshold``."""
    steps = q_exit_steps(exit_probs, threshold)
    chosen = ce.gather(-1, steps[:, None]).squeeze(-1)
    return _masked_mean(chosen, mask), _masked_mean(steps.float() + 1, mask)
