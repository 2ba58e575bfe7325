"""The LoopLM training objective (paper §3, arXiv 2510.25741).

The exit distribution p(t) over the T steps comes from the model package (`ouro.model.exit`).
Stage I (pre-training, jointly with the LM), per token:  Σ_t p(t) L(t) - β H(p),  averaged over tokens.
Stage II (gate only, LM frozen), with detached per-token losses:
    I(t) = max(0, L(t-1) - L(t)),  w(t) = sigmoid(k (I(t) - γ)),
    L_gate(t) = -mean_i [w log(1 - λ_t) + (1 - w) log λ_t],  L_gate = (1/T) Σ_{t=2..T} L_gate(t).
Per-step cross-entropies come from `ouro.cross_entropy`, which never holds more than ``chunk_size`` rows of
logits: memory grows with the chunk, not with T x tokens x vocab (benchmarks/loss_memory.py measures it). In
training, `stage1_loss_from_hidden` computes the LM head's gradients in the same pass as its losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ouro.cross_entropy import cross_entropy_with_known_gradient, per_step_cross_entropy
from ouro.model.exit import exit_distribution, exit_log_distribution, q_exit_steps


# ------------------------------------------------------------------------------------------------- losses
@dataclass
class LoopLoss:
    """A loss with the statistics worth logging; all statistics are detached means over counted tokens."""

    loss: torch.Tensor
    ce_per_step: torch.Tensor  # (steps,) mean cross-entropy of each step
    exit_probs: torch.Tensor  # (steps,) mean p(t)
    expected_step: torch.Tensor  # mean Σ_t t p(t), 1-based
    entropy: torch.Tensor  # mean H(p)


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
    return dict(
        ce_per_step=_masked_mean(ce, mask).detach(),
        exit_probs=_masked_mean(p, mask).detach(),
        expected_step=_masked_mean((p * steps).sum(-1), mask).detach(),
        entropy=_masked_mean(entropy, mask).detach(),
    )


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


def stage1_loss_from_hidden(
    hidden_states: list[torch.Tensor],
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    gate_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    chunk_size: int = 4096,
) -> tuple[LoopLoss, torch.Tensor]:
    """`stage1_loss` of the LM head's per-step cross-entropy, and that cross-entropy (tokens, steps).

    With gradients enabled, dL/dCE_t(i) = p(t | i) m_i / N is known before the cross-entropy (the gates come
    first), so `cross_entropy_with_known_gradient` computes the LM head's gradients in the forward pass and
    its logits are computed once rather than again in backward. Without gradients this is plain
    `per_step_cross_entropy` + `stage1_loss`. The two give the same loss and the same gradients.
    """
    if not torch.is_grad_enabled():
        ce = per_step_cross_entropy(hidden_states, lm_head_weight, targets, chunk_size)
        return stage1_loss(ce, gate_logits, mask, beta), ce
    weights = mask.float() / mask.sum().clamp(min=1)
    loss_grad = exit_distribution(gate_logits.detach()) * weights[:, None]
    ce, carrier = cross_entropy_with_known_gradient(
        hidden_states, lm_head_weight, targets, loss_grad, chunk_size
    )
    result = stage1_loss(ce, gate_logits, mask, beta)
    result.loss = result.loss + carrier
    return result, ce


def stage2_gate_loss(
    ce: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor, k: float = 50.0, gamma: float = 0.005
) -> LoopLoss:
    """Focused adaptive gate loss of Stage II; ``ce`` is detached here (only the gate learns).

    For t = 2..T: I(t) = max(0, L(t-1) - L(t)), w(t) = sigmoid(k (I(t) - γ)) and the binary cross-entropy
    ``-[w log(1 - λ_t) + (1 - w) log λ_t]`` averaged over tokens, then over the T - 1 steps.
    """
    ce = ce.detach().float()
    steps = ce.shape[-1]
    if steps < 2:
        raise ValueError("Stage II gate training needs at least 2 recurrent steps")
    improvement = (ce[:, :-1] - ce[:, 1:]).clamp(min=0)  # I(t), t = 2..T
    target_continue = torch.sigmoid(k * (improvement - gamma))  # w(t)
    z = gate_logits[:, 1:].float()
    bce = -(target_continue * F.logsigmoid(-z) + (1 - target_continue) * F.logsigmoid(z))
    loss = _masked_mean(bce, mask).mean()
    return LoopLoss(loss=loss, **_stats(ce, exit_log_distribution(gate_logits.detach()), mask))


def q_exit_cross_entropy(
    ce: torch.Tensor, exit_probs: torch.Tensor, mask: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and mean 1-based depth when every token exits by Q-exit at ``threshold``."""
    steps = q_exit_steps(exit_probs, threshold)
    chosen = ce.gather(-1, steps[:, None]).squeeze(-1)
    return _masked_mean(chosen, mask), _masked_mean(steps.float() + 1, mask)
