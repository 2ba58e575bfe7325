"""Ouro looped language model for ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``.

Written by the ``ouro`` toolkit (not the original ByteDance code) and shipped with every export. It imports only
torch and transformers and works with transformers >= 4.56 (including 5.x).

* The whole decoder stack runs ``total_ut_steps`` times with shared weights; the final norm ends every pass and
  its output feeds the next pass, the LM head and the exit gate. Module names are the checkpoint keys.
* KV cache: one slot per (pass, layer) at index ``pass * num_hidden_layers + layer`` of a growing
  ``DynamicCache``; a cache that ``generate`` sized for ``num_hidden_layers`` slots is replaced while empty.
* Attention masks are built here from the 2-D padding mask (left padding works: padded keys are masked and
  positions count from the first real token), so batched generation equals unbatched generation.
* Exit: ``exit_at_step`` (static, 0-based) or ``exit_threshold`` q (Q-exit: the first pass whose exit CDF reaches
  q; defaults to ``config.early_exit_threshold``). While decoding one token at a time, passes after the exit are
  really skipped once every row of the batch has exited; the skipped passes' cache slots receive a copy of the
  exit pass's keys/values at that position (what later tokens read there).
* ``labels``: the loss is the expected next-token cross-entropy under the exit distribution, Σ_t p(t) CE_t.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_ouro import OuroConfig

# transformers 5 renamed the cache field of model outputs from `past_key_values` to `cache`.
CACHE_FIELD = (
    "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"
)


@dataclass
class OuroModelOutput(BaseModelOutputWithPast):
    """Output of `OuroModel`: also every computed pass's normalised hidden state, the gate logits and, when
    decoding with early exit, the pass each row exited at."""

    step_hidden_states: tuple | None = None
    gate_logits: torch.FloatTensor | None = None
    exit_steps: torch.LongTensor | None = None


@dataclass
class OuroCausalLMOutput(CausalLMOutputWithPast):
    """Causal-LM output plus the exit distribution and the exit pass chosen for every returned position."""

    step_hidden_states: tuple | None = None
    exit_probs: torch.FloatTensor | None = None
    exit_steps: torch.LongTensor | None = None


class OuroRMSNorm(nn.Module):
    """RMSNorm computed in fp32, then scaled by the learned weight."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x32.to(dtype)


class OuroMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions, head_dim, theta, dtype):
    """cos/sin (batch, seq, head_dim) for integer positions (batch, seq), computed in fp32."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    with torch.autocast(device_type=positions.device.type, enabled=False):
        freqs = positions.float()[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class OuroAttention(nn.Module):
    """Grouped-query attention with RoPE through ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, slot=0):
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, slot)
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        causal = mask is None and seq > 1 and seq == k.shape[2]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


class OuroDecoderLayer(nn.Module):
    """Sandwich-norm layer: ``h = x + n2(attn(n1(x)))``, ``out = h + n4(mlp(n3(h)))``."""

    def __init__(self, config, layer_idx):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = OuroAttention(config, layer_idx)
        self.mlp = OuroMLP(config)
        self.input_layernorm = OuroRMSNorm(config.hidden_size, eps)
        self.input_layernorm_2 = OuroRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = OuroRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm_2 = OuroRMSNorm(config.hidden_size, eps)

    def forward(self, x, cos, sin, mask, cache=None, slot=0):
        h = x + self.input_layernorm_2(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, slot))
        return h + self.post_attention_layernorm_2(self.mlp(self.post_attention_layernorm(h)))


class OuroPreTrainedModel(PreTrainedModel):
    config_class = OuroConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["OuroDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_cache_class = True


def exit_log_probs(gate_logits):
    """log p(t) (..., steps) from gate logits: p(t) = λ_t Π_{j<t}(1-λ_j), the last step takes what is left."""
    log_exit = F.logsigmoid(gate_logits.float())
    log_stay = F.logsigmoid(-gate_logits.float())
    survive = torch.cumsum(log_stay, dim=-1) - log_stay
    log_p = survive + log_exit
    return torch.cat([log_p[..., :-1], survive[..., -1:]], dim=-1)


def q_exit(exit_probs, threshold):
    """0-based exit step: the first step whose exit CDF reaches ``threshold`` (q >= 1: the last step)."""
    steps = exit_probs.shape[-1]
    if threshold >= 1.0:
        return torch.full(exit_probs.shape[:-1], steps - 1, dtype=torch.long, device=exit_probs.device)
    reached = exit_probs.cumsum(-1) >= threshold
    reached[..., -1] = True
    return reached.float().argmax(-1)


class OuroModel(OuroPreTrainedModel):
    """Embedding, ``total_ut_steps`` passes of the shared layers (final norm after each) and the exit gate."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(OuroDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = OuroRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.early_exit_gate = nn.Linear(config.hidden_size, 1, bias=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    # ------------------------------------------------------------------------------------------ cache and masks
    def _prepare_cache(self, cache):
        slots = self.config.total_ut_steps * self.config.num_hidden_layers
        if cache is None:
            return DynamicCache()
        if not isinstance(cache, Cache):
            raise TypeError(
                "Ouro needs a transformers Cache (e.g. DynamicCache()) as cache / past_key_values"
            )
        grows = getattr(cache, "layer_class_to_replicate", None) is not None
        if grows or len(getattr(cache, "layers", [])) >= slots:
            return cache
        if cache.get_seq_length() > 0:
            raise ValueError(
                f"this cache holds {len(cache.layers)} layers but Ouro needs total_ut_steps x "
                f"num_hidden_layers = {slots} slots; pass an empty DynamicCache()"
            )
        return DynamicCache()

    @staticmethod
    def _build_mask(attention_mask, batch, q_len, past, device):
        """Boolean (batch, 1, q, kv) mask (True = attend), or None for plain causal attention."""
        kv_len = past + q_len
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask
        padded = attention_mask is not None and not bool(attention_mask[:, -kv_len:].all())
        if not padded and (past == 0 or q_len == 1):
            return None
        if attention_mask is None:
            key_valid = torch.ones(batch, kv_len, dtype=torch.bool, device=device)
        else:
            key_valid = attention_mask[:, -kv_len:].to(device=device, dtype=torch.bool)
        query = torch.arange(q_len, device=device)[:, None] + past
        key = torch.arange(kv_len, device=device)[None, :]
        allowed = (key <= query)[None, None] & key_valid[:, None, None, :]
        # A padded query still sees itself, so no row is empty (NaN); nothing real ever reads its output.
        return allowed | (key == query)[None, None]

    @staticmethod
    def _positions(attention_mask, position_ids, batch, q_len, past, device):
        if position_ids is not None:
            return position_ids.to(device).expand(batch, -1)
        if attention_mask is not None and attention_mask.dim() == 2:
            counted = attention_mask.to(device=device, dtype=torch.long).cumsum(-1) - 1
            return counted.clamp(min=0)[:, -q_len:]
        return torch.arange(past, past + q_len, device=device)[None].expand(batch, -1)

    @staticmethod
    def _fill_skipped(cache, exit_steps, computed, num_steps, num_layers):
        """After a decode step with early exit: for every pass after a row's exit pass m, the new position's
        cache entry becomes a copy of pass m's keys/values (appended where the pass did not run at all)."""
        exits = exit_steps.tolist()
        for step in range(1, num_steps):
            behind = [m for m in sorted(set(exits)) if m < step]
            if not behind:
                continue
            for layer in range(num_layers):
                dst = step * num_layers + layer
                if step >= computed:  # nobody ran this pass: append a copy for every row
                    keys = cache.layers[layer].keys[:, :, -1:].clone()
                    values = cache.layers[layer].values[:, :, -1:].clone()
                    target_k, target_v = keys, values
                else:
                    target_k, target_v = cache.layers[dst].keys, cache.layers[dst].values
                for m in behind:
                    rows = exit_steps == m
                    src = cache.layers[m * num_layers + layer]
                    target_k[rows, :, -1:] = src.keys[rows, :, -1:]
                    target_v[rows, :, -1:] = src.values[rows, :, -1:]
                if step >= computed:
                    cache.update(target_k, target_v, dst)

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        cache=None,
        exit_threshold=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, q_len = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = cache if cache is not None else past_key_values
        cache = self._prepare_cache(cache) if use_cache else None
        past = cache.get_seq_length() if cache is not None else 0
        mask = self._build_mask(attention_mask, batch, q_len, past, hidden.device)
        positions = self._positions(attention_mask, position_ids, batch, q_len, past, hidden.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, hidden.dtype)

        num_steps, num_layers = self.config.total_ut_steps, self.config.num_hidden_layers
        threshold = self.config.early_exit_threshold if exit_threshold is None else float(exit_threshold)
        # Real early exit while decoding one token at a time after the prompt (which runs every pass).
        skip = cache is not None and q_len == 1 and past > 0 and threshold < 1.0 and not self.training
        exit_steps = torch.full((batch,), num_steps - 1, dtype=torch.long, device=hidden.device)
        exited = torch.zeros(batch, dtype=torch.bool, device=hidden.device)
        cdf = torch.zeros(batch, device=hidden.device)
        survive = torch.zeros(batch, device=hidden.device)
        states, gates = [], []
        for step in range(num_steps):
            for i, layer in enumerate(self.layers):
                hidden = layer(hidden, cos, sin, mask, cache, step * num_layers + i)
            hidden = self.norm(hidden)
            states.append(hidden)
            gates.append(self.early_exit_gate(hidden))
            if skip and step < num_steps - 1:
                gate = gates[-1][:, -1, 0].float()
                cdf = cdf + torch.where(exited, 0.0, (survive + F.logsigmoid(gate)).exp())
                survive = survive + F.logsigmoid(-gate)
                new = (cdf >= threshold) & ~exited
                exit_steps = torch.where(new, step, exit_steps)
                exited = exited | new
                if bool(exited.all()):
                    break
        if skip:
            self._fill_skipped(cache, exit_steps, len(states), num_steps, num_layers)
            exit_steps = exit_steps[:, None]
        output = OuroModelOutput(
            last_hidden_state=hidden,
            **{CACHE_FIELD: cache},
            step_hidden_states=tuple(states),
            gate_logits=torch.cat(gates, dim=-1),
            exit_steps=exit_steps if skip else None,
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output


class OuroForCausalLM(OuroPreTrainedModel, GenerationMixin):
    """`OuroModel` plus an untied LM head shared by every pass; see the module docstring for exits."""

    def __init__(self, config):
        super().__init__(config)
        self.model = OuroModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        cache=None,
        logits_to_keep=0,
        exit_at_step=None,
        exit_threshold=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        threshold = self.config.early_exit_threshold if exit_threshold is None else float(exit_threshold)
        if exit_at_step is not None:
            threshold = 1.0  # a static exit computes every pass; only the chosen one feeds the head
        cache = cache if cache is not None else past_key_values
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache if labels is None else False,
            exit_threshold=threshold,
            output_hidden_states=output_hidden_states,
        )
        states = out.step_hidden_states
        cache = getattr(out, CACHE_FIELD)
        keep = (
            slice(-logits_to_keep, None)
            if isinstance(logits_to_keep, int) and logits_to_keep
            else slice(None)
        )
        if isinstance(logits_to_keep, torch.Tensor):
            keep = logits_to_keep
        exit_probs = None
        if len(states) == self.config.total_ut_steps:
            exit_probs = exit_log_probs(out.gate_logits).exp()
        if exit_at_step is not None:
            if not -len(states) <= exit_at_step < len(states):
                raise ValueError(f"exit_at_step {exit_at_step} is out of range for {len(states)} passes")
            steps = torch.full(
                states[0].shape[:2], exit_at_step % len(states), dtype=torch.long, device=states[0].device
            )
        elif out.exit_steps is not None:
            steps = out.exit_steps
        else:
            steps = q_exit(exit_probs, threshold)
        steps = steps[:, keep]
        stacked = torch.stack([s[:, keep] for s in states], dim=2)  # batch, seq, computed steps, hidden
        chosen = stacked.gather(
            2, steps.clamp(max=len(states) - 1)[..., None, None].expand(-1, -1, 1, stacked.shape[-1])
        ).squeeze(2)
        logits = self.lm_head(chosen)

        loss = None
        if labels is not None:
            targets = labels[:, 1:].to(logits.device)
            valid = targets != -100
            per_step = torch.stack(
                [
                    F.cross_entropy(
                        self.lm_head(s[:, :-1]).float().flatten(0, 1),
                        targets.flatten(),
                        ignore_index=-100,
                        reduction="none",
                    ).view_as(targets)
                    for s in states
                ],
                dim=-1,
            )
            expected = (per_step * exit_probs[:, :-1]).sum(-1)
            loss = (expected * valid).sum() / valid.sum().clamp(min=1)

        result = OuroCausalLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: cache},
            hidden_states=out.hidden_states,
            step_hidden_states=states,
            exit_probs=exit_probs,
            exit_steps=steps,
        )
        if return_dict is False:
            return result.to_tuple()
        return result


__all__ = ["OuroForCausalLM", "OuroModel", "OuroPreTrainedModel"]
