"""The exit distribution of a looped model and Q-exit (paper §3, arXiv 2510.25741).

After pass t the exit gate gives λ_t = sigmoid(gate logit). In survival form, over T passes:
    p(t) = λ_t Π_{j<t} (1 - λ_j)  for t < T,     p(T) = Π_{j<T} (1 - λ_j).
Q-exit at threshold q stops at the first pass whose CDF Σ_{j<=t} p(j) reaches q (q = 1: the last pass).

`exit_log_distribution` computes p over all passes at once (training, scoring); `ExitCDF` accumulates the same
CDF pass by pass, so generation can stop a token before its later passes run. Both use `_pass_log_exit`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pass_log_exit(gate_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log λ, log (1 - λ))`` of gate logits, in float32, computed stably with log-sigmoids."""
    return F.logsigmoid(gate_logits.float()), F.logsigmoid(-gate_logits.float())


def exit_log_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """log p(t) over the last dimension (passes) of ``gate_logits``."""
    log_exit, log_stay = _pass_log_exit(gate_logits)
    survive = torch.cumsum(log_stay, dim=-1) - log_stay  # Σ_{j<t} log(1 - λ_j)
    log_p = survive + log_exit
    return torch.cat([log_p[..., :-1], survive[..., -1:]], dim=-1)  # the last pass takes what is left


def exit_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """p(t) over the last dimension (passes); sums to 1."""
    return exit_log_distribution(gate_logits).exp()


def q_exit_steps(exit_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """0-based exit pass per token: the first pass whose CDF reaches ``threshold`` (q = 1 → the last pass)."""
    steps = exit_probs.shape[-1]
    if threshold >= 1.0:
        return torch.full(exit_probs.shape[:-1], steps - 1, dtype=torch.long, device=exit_probs.device)
    reached = exit_probs.cumsum(-1) >= threshold
    reached[..., -1] = True
    return reached.float().argmax(-1)


class ExitCDF:
    """The exit CDF of a set of tokens, accumulated one pass at a time (for early exit while decoding).

    ``update(gate_logits)`` after pass t (t < T - 1) returns Σ_{j<=t} p(j) per token, the same value as
    ``exit_distribution(all gate logits).cumsum(-1)[..., t]``; `keep` drops the tokens that have exited.
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str) -> None:
        self.cdf = torch.zeros(shape, device=device)
        self.log_survive = torch.zeros(shape, device=device)  # Σ_{j<t} log(1 - λ_j)

    def update(self, gate_logits: torch.Tensor) -> torch.Tensor:
        """Add the pass whose gate logits (one per token) are given; returns the CDF after it."""
        log_exit, log_stay = _pass_log_exit(gate_logits)
        self.cdf = self.cdf + (self.log_survive + log_exit).exp()
        self.log_survive = self.log_survive + log_stay
        return self.cdf

    def keep(self, mask: torch.Tensor) -> None:
        """Continue with the tokens where ``mask`` is true only."""
        self.cdf, self.log_survive = self.cdf[mask], self.log_survive[mask]
