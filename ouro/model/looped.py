"""The looped Ouro model: one stack of decoder layers run ``total_ut_steps`` times with shared weights.

Module names equal the official checkpoint keys (``model.layers.{i}.self_attn.q_proj`` ...), so official
weights load without conversion. Reading order: `DecoderLayer`, `OuroModel` (embedding, passes, exit gate),
`OuroForCausalLM` (LM head, per-step logits, exit selection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ouro.config import OuroConfig
from ouro.model.attention import Attention, AttentionLayout, KVCacheLike
from ouro.model.exit import exit_distribution, q_exit_steps
from ouro.model.layers import RMSNorm, SwiGLU, rope_cos_sin
from ouro.model.weights import save_model


class DecoderLayer(nn.Module):
    """Sandwich-norm decoder layer.

    ``h = x + input_layernorm_2(attn(input_layernorm(x)))``;
    ``out = h + post_attention_layernorm_2(mlp(post_attention_layernorm(h)))``.
    """

    def __init__(self, config: OuroConfig, layer_idx: int) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(
            h, config.num_attention_heads, config.num_key_value_heads, layer_idx, config.attention_dropout
        )
        self.mlp = SwiGLU(h, config.intermediate_size)
        self.input_layernorm = RMSNorm(h, eps)
        self.input_layernorm_2 = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm_2 = RMSNorm(h, eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        step: int = 0,
        cache: KVCacheLike | None = None,
    ) -> torch.Tensor:
        h = x + self.input_layernorm_2(self.self_attn(self.input_layernorm(x), rope, layout, step, cache))
        return h + self.post_attention_layernorm_2(self.mlp(self.post_attention_layernorm(h)))


@dataclass
class LoopOutput:
    """What one forward of the looped model produces.

    ``hidden_states[t]`` is the normalised hidden state after pass ``t`` (batch, seq, hidden): the input of pass
    ``t + 1`` and what the LM head and the exit gate read. ``gate_logits[..., t]`` is the exit gate's logit after
    pass ``t`` (batch, seq, steps); λ_t = sigmoid(gate_logits[..., t]).
    """

    hidden_states: list[torch.Tensor]
    gate_logits: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.hidden_states)


class OuroModel(nn.Module):
    """Embedding, ``total_ut_steps`` passes of the shared layers (final norm after each), and the exit gate."""

    def __init__(self, config: OuroConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.early_exit_gate = nn.Linear(config.hidden_size, 1, bias=True)
        self.activation_checkpointing = False

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype)

    def embed(
        self, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The input of the first pass and the RoPE tables every pass uses: the start of the loop."""
        hidden = self.embed_tokens(input_ids)
        return hidden, self.rope(positions, hidden.dtype)

    def run_pass(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        step: int,
        cache: KVCacheLike | None = None,
    ) -> torch.Tensor:
        """One pass of the whole stack followed by the final norm; ``step`` selects the KV-cache slots."""
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, rope, layout, step, cache, use_reentrant=False)
            else:
                hidden = layer(hidden, rope, layout, step, cache)
        return self.norm(hidden)

    def step(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        index: int,
        cache: KVCacheLike | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the loop: pass ``index`` (0-based) and the exit gate's logit after it (``..., 1``).

        Training runs every step; generation runs them only for the tokens that have not exited yet.
        """
        hidden = self.run_pass(hidden, rope, layout, index, cache)
        return hidden, self.early_exit_gate(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        num_steps: int | None = None,
        layout: AttentionLayout | None = None,
        cache: KVCacheLike | None = None,
    ) -> LoopOutput:
        steps = num_steps or self.config.total_ut_steps
        if layout is None:
            layout = AttentionLayout.build(input_ids, doc_ids)
        hidden, rope = self.embed(input_ids, layout.positions)
        states, gates = [], []
        for t in range(steps):
            hidden, gate = self.step(hidden, rope, layout, t, cache)
            states.append(hidden)
            gates.append(gate)
        return LoopOutput(hidden_states=states, gate_logits=torch.cat(gates, dim=-1))


class OuroForCausalLM(nn.Module):
    """The Ouro language model: `OuroModel` plus an untied LM head shared by every pass.

    ``forward(input_ids, doc_ids)`` returns a `LoopOutput` with every pass's normalised hidden state and gate
    logit. ``logits(output, step)`` gives one pass's logits, ``exit_distribution(output)`` the per-token exit
    probabilities p(t), and ``exit_logits(output, step=... | threshold=...)`` the logits of a static exit or of
    Q-exit (`ouro.model.exit`). Losses live in `ouro.objective` so the T x seq x vocab logits never exist at
    once.
    """

    def __init__(self, config: OuroConfig) -> None:
        super().__init__()
        self.config = config
        self.model = OuroModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    # --------------------------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for linear and embedding weights, zeros for biases, ones for norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer call in backward instead of storing its activations (T x layers calls)."""
        self.model.activation_checkpointing = enabled

    # ---------------------------------------------------------------------------------------- stage controls
    # Schedules change these between forwards (in tokens); no weight changes, and every forward reads them.
    def set_loop_count(self, steps: int) -> None:
        """Run ``steps`` passes of the stack per forward from now on (``config.total_ut_steps``)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"the loop count (total_ut_steps) must be an integer >= 1, got {steps!r}")
        self.config.total_ut_steps = steps

    def set_rope_base(self, theta: float) -> None:
        """Use RoPE base ``theta`` from the next forward on (``config.rope_theta``)."""
        if not theta > 0:
            raise ValueError(f"the RoPE base (rope_theta) must be positive, got {theta!r}")
        self.config.rope_theta = float(theta)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        num_steps: int | None = None,
        layout: AttentionLayout | None = None,
        cache: KVCacheLike | None = None,
    ) -> LoopOutput:
        """Run all passes. ``num_steps`` overrides ``config.total_ut_steps`` (e.g. for a depth sweep)."""
        return self.model(input_ids, doc_ids=doc_ids, num_steps=num_steps, layout=layout, cache=cache)

    def last_position_logits(
        self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits of every pass at the last position (batch, steps, vocab) and the exit gate's logits
        there (batch, steps): what scoring a prompt reads, without the logits of every position."""
        out = self(input_ids, doc_ids=doc_ids)
        last = torch.stack([h[:, -1] for h in out.hidden_states], dim=1)
        return self.lm_head(last), out.gate_logits[:, -1]

    def logits(self, output: LoopOutput, step: int = -1) -> torch.Tensor:
        """Logits (batch, seq, vocab) of pass ``step`` (0-based; -1 = the last pass)."""
        return self.lm_head(output.hidden_states[step])

    @staticmethod
    def exit_distribution(output: LoopOutput) -> torch.Tensor:
        """Per-token exit probabilities p(t) (batch, seq, steps), summing to 1 over steps."""
        return exit_distribution(output.gate_logits)

    def exit_logits(
        self, output: LoopOutput, step: int | None = None, threshold: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the chosen exit and the 0-based exit step of every token.

        ``step``: static exit at that pass for every token. ``threshold`` q: Q-exit, the first pass whose exit
        CDF reaches q (q = 1.0 is the last pass). With neither, ``config.early_exit_threshold`` is used. All
        passes were computed here; `ouro.generation` skips the passes after a token's exit.
        """
        hidden = torch.stack(output.hidden_states, dim=2)  # batch, seq, steps, hidden
        if step is not None:
            if not -output.num_steps <= step < output.num_steps:
                raise ValueError(f"exit step {step} is out of range for {output.num_steps} passes")
            steps = torch.full(
                hidden.shape[:2], step % output.num_steps, device=hidden.device, dtype=torch.long
            )
        else:
            q = self.config.early_exit_threshold if threshold is None else threshold
            steps = q_exit_steps(self.exit_distribution(output), q)
        chosen = hidden.gather(2, steps[..., None, None].expand(-1, -1, 1, hidden.shape[-1])).squeeze(2)
        return self.lm_head(chosen), steps

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_pretrained(
        self,
        directory: str | Path,
        dtype: torch.dtype | None = torch.bfloat16,
        max_shard_bytes: int = 5 * 2**30,
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (sharded with an index above ``max_shard_bytes``);
        `ouro.checkpoints.load_model` reads it back."""
        return save_model(self, directory, dtype=dtype, max_shard_bytes=max_shard_bytes)


def flops_per_token(
    config: OuroConfig, seq_len: int, num_steps: int | None = None, training: bool = True
) -> float:
    """Matmul FLOPs per token of a forward (x3 for training) counting every pass.

    Linear layers: 2 FLOPs per weight per pass; causal attention: 2 x 2 x seq/2 x hidden per layer per pass
    (QK^T and AV over on average half the context); LM head once per pass (the objective reads every pass).
    """
    steps = num_steps or config.total_ut_steps
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    per_layer = 2 * (h * h * 2 + h * kv * 2 + 3 * h * i) + 2 * 2 * (seq_len / 2) * h
    forward = steps * (n * per_layer + 2 * h * config.vocab_size + 2 * h)
    return forward * (3 if training else 1)


def count_parameters_on_meta(config: OuroConfig) -> int:
    """Parameter count without allocating memory."""
    with torch.device("meta"):
        model = OuroForCausalLM(config)
    return model.num_parameters()


__all__ = [
    "DecoderLayer",
    "LoopOutput",
    "OuroForCausalLM",
    "OuroModel",
    "flops_per_token",
    "count_parameters_on_meta",
]
