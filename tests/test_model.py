"""The looped model against an independent reference written from docs/model.md §2, plus layout, masking and weights.

The reference (`reference_forward`) reads the state dict by its official key names and recomputes everything in
float64 with explicit softmax attention, a hand-built causal / same-document mask, `repeat_kv` for GQA and
rotate-half RoPE. It shares no code with `ouro.model`.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ouro.checkpoints import load_model
from ouro.config import OuroConfig
from ouro.model import AttentionLayout, OuroForCausalLM, flops_per_token
from ouro.model.layers import apply_rope

#: Overrides of the ``tiny`` preset: a larger init than 0.02 so that activations, logits and gates are far from
#: trivial, and an odd vocabulary so that no size is mistaken for another.
CHANGES = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    initializer_range=0.2,
    total_ut_steps=3,
)


def make_config(**changes) -> OuroConfig:
    return OuroConfig.preset("tiny", **{**CHANGES, **changes})


def make_model(**changes) -> OuroForCausalLM:
    """`build_tiny_model` with `CHANGES`, whose norm weights and gate bias are random too, so that swapping two
    norms shows."""
    model = build_tiny_model(**{**CHANGES, **changes})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(1 + 0.3 * torch.randn_like(param) if "norm" in name else torch.randn_like(param))
    return model


# ------------------------------------------------------------------------------------------------ reference
def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * groups, seq, dim), each KV head serving `groups` heads."""
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def reference_positions_and_mask(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions restarting at every document start, and the (batch, seq, seq) may-attend mask, by hand loops."""
    batch, seq = doc_ids.shape
    positions = torch.zeros(batch, seq, dtype=torch.long)
    allowed = torch.zeros(batch, seq, seq, dtype=torch.bool)
    for b in range(batch):
        for i in range(seq):
            if i > 0 and doc_ids[b, i] == doc_ids[b, i - 1]:
                positions[b, i] = positions[b, i - 1] + 1
            for j in range(i + 1):
                allowed[b, i, j] = bool(doc_ids[b, i] == doc_ids[b, j])
    return positions, allowed


def explicit_attention(q, k, v, allowed):
    """q (b, heads, q_len, d), k/v (b, kv_heads, kv_len, d), allowed (b, q_len, kv_len) boolean."""
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def reference_forward(
    model: OuroForCausalLM,
    input_ids: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    steps: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every pass's logits and the gate logits (batch, seq, steps), in float64, from the state dict alone."""
    c = model.config
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    steps = steps or c.total_ut_steps
    heads, kv_heads, d = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    batch, seq = input_ids.shape
    if doc_ids is None:
        doc_ids = torch.zeros_like(input_ids)
    positions, allowed = reference_positions_and_mask(doc_ids)

    def rms(x, weight):
        return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))

    inv_freq = c.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[..., None] * inv_freq  # batch, seq, d/2
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]

    def rope(x):  # (batch, heads, seq, d)
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][input_ids]
    all_logits, gates = [], []
    for _ in range(steps):
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            a = rms(x, w[p + "input_layernorm.weight"])
            q = (a @ w[p + "self_attn.q_proj.weight"].T).view(batch, seq, heads, d).transpose(1, 2)
            k = (a @ w[p + "self_attn.k_proj.weight"].T).view(batch, seq, kv_heads, d).transpose(1, 2)
            v = (a @ w[p + "self_attn.v_proj.weight"].T).view(batch, seq, kv_heads, d).transpose(1, 2)
            o = (
                explicit_attention(rope(q), rope(k), v, allowed)
                .transpose(1, 2)
                .reshape(batch, seq, heads * d)
            )
            h = x + rms(o @ w[p + "self_attn.o_proj.weight"].T, w[p + "input_layernorm_2.weight"])
            m = rms(h, w[p + "post_attention_layernorm.weight"])
            mlp = (F.silu(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T)) @ w[
                p + "mlp.down_proj.weight"
            ].T
            x = h + rms(mlp, w[p + "post_attention_layernorm_2.weight"])
        x = rms(x, w["model.norm.weight"])  # ends every pass; feeds the next pass, the head and the gate
        all_logits.append(x @ w["lm_head.weight"].T)
        gates.append(x @ w["model.early_exit_gate.weight"].T + w["model.early_exit_gate.bias"])
    return all_logits, torch.cat(gates, -1)


def hand_exit_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    lam = torch.sigmoid(gate_logits.double())
    steps = lam.shape[-1]
    p = torch.zeros_like(lam)
    survive = torch.ones_like(lam[..., 0])
    for t in range(steps):
        p[..., t] = survive * lam[..., t] if t < steps - 1 else survive
        survive = survive * (1 - lam[..., t])
    return p


def official_keys(num_layers: int) -> list[str]:
    keys = [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.early_exit_gate.weight",
        "model.early_exit_gate.bias",
        "lm_head.weight",
    ]
    for i in range(num_layers):
        keys += [f"model.layers.{i}.self_attn.{n}_proj.weight" for n in "qkvo"]
        keys += [f"model.layers.{i}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
        keys += [
            f"model.layers.{i}.{n}.weight"
            for n in (
                "input_layernorm",
                "input_layernorm_2",
                "post_attention_layernorm",
                "post_attention_layernorm_2",
            )
        ]
    return sorted(keys)


# ------------------------------------------------------------------------------------------ layout and params
def test_state_dict_keys_are_the_official_layout():
    model = make_model(num_key_value_heads=2)
    state = model.state_dict()
    assert sorted(state) == official_keys(2)
    c = model.config
    kv = c.num_key_value_heads * c.head_dim
    assert state["model.layers.1.self_attn.q_proj.weight"].shape == (c.hidden_size, c.hidden_size)
    assert state["model.layers.1.self_attn.k_proj.weight"].shape == (kv, c.hidden_size)
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (c.hidden_size, c.intermediate_size)
    assert state["model.early_exit_gate.weight"].shape == (1, c.hidden_size)
    assert state["model.early_exit_gate.bias"].shape == (1,)
    assert state["lm_head.weight"].data_ptr() != state["model.embed_tokens.weight"].data_ptr()


def test_parameter_count_does_not_depend_on_steps():
    counts = {t: make_model(total_ut_steps=t).num_parameters() for t in (1, 4, 8)}
    assert len(set(counts.values())) == 1
    assert sorted(make_model(total_ut_steps=8).state_dict()) == official_keys(2)


def test_passes_equal_manual_calls_of_the_shared_layers():
    model = make_model()
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids)
    inner = model.model
    layout = AttentionLayout.build(ids)
    hidden = inner.embed_tokens(ids)
    rope = inner.rope(layout.positions, hidden.dtype)
    assert out.num_steps == 3
    for t in range(3):
        for layer in inner.layers:
            hidden = layer(hidden, rope, layout)
        hidden = inner.norm(hidden)
        torch.testing.assert_close(out.hidden_states[t], hidden, rtol=0, atol=0)
        torch.testing.assert_close(
            out.gate_logits[..., t : t + 1], inner.early_exit_gate(hidden), rtol=0, atol=0
        )
    assert not torch.allclose(out.hidden_states[0], out.hidden_states[1])


# ------------------------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("packed", [False, True])
def test_logits_match_reference_implementation(kv_heads, packed):
    model = make_model(num_key_value_heads=kv_heads)
    ids = torch.randint(0, 97, (2, 11))
    doc_ids = torch.tensor([[0] * 4 + [1] * 5 + [2] * 2, [0] * 11]) if packed else None
    out = model(ids, doc_ids=doc_ids)
    ref_logits, ref_gates = reference_forward(model, ids, doc_ids)
    for t in range(3):
        torch.testing.assert_close(model.logits(out, t).double(), ref_logits[t], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.gate_logits.double(), ref_gates, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.logits(out).double(), ref_logits[-1], rtol=1e-4, atol=1e-4)


def test_num_steps_override():
    model = make_model()
    ids = torch.randint(0, 97, (1, 7))
    full = model(ids)
    short = model(ids, num_steps=2)
    assert short.num_steps == 2 and short.gate_logits.shape == (1, 7, 2)
    for t in range(2):
        torch.testing.assert_close(short.hidden_states[t], full.hidden_states[t], rtol=0, atol=0)
    deep = model(ids, num_steps=5)
    ref_logits, ref_gates = reference_forward(model, ids, steps=5)
    assert deep.num_steps == 5
    torch.testing.assert_close(model.logits(deep, 4).double(), ref_logits[4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deep.gate_logits.double(), ref_gates, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------- document masking
def test_documents_do_not_see_each_other():
    model = make_model()
    doc_a, doc_b = torch.randint(0, 97, (5,)), torch.randint(0, 97, (6,))
    other_a = torch.randint(0, 97, (3,))
    packed = torch.cat([doc_a, doc_b])[None]
    packed_other = torch.cat([other_a, doc_b])[None]
    doc_ids = torch.tensor([[0] * 5 + [1] * 6])
    doc_ids_other = torch.tensor([[0] * 3 + [1] * 6])
    out = model(packed, doc_ids=doc_ids)
    out_other = model(packed_other, doc_ids=doc_ids_other)
    alone = model(doc_b[None])
    for t in range(3):
        b_logits = model.logits(out, t)[0, 5:]
        torch.testing.assert_close(b_logits, model.logits(out_other, t)[0, 3:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b_logits, model.logits(alone, t)[0], rtol=1e-5, atol=1e-5)
    # Without document ids, B does attend to A: the test above could fail.
    mixed = model(packed)
    assert not torch.allclose(model.logits(mixed)[0, 5:], model.logits(alone)[0], atol=1e-3)


def test_changing_a_later_document_leaves_an_earlier_one_unchanged():
    model = make_model()
    ids = torch.randint(0, 97, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 97
    doc_ids = torch.tensor([[0] * 6 + [1] * 4])
    a, b = model(ids, doc_ids=doc_ids), model(changed, doc_ids=doc_ids)
    torch.testing.assert_close(model.logits(a)[0, :6], model.logits(b)[0, :6], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- attention backends
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_sdpa_attention_equals_explicit_attention(kv_heads):
    model = make_model(num_key_value_heads=kv_heads)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 8, 32)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 2, 2, 2, 3, 3]])
    for docs in (None, doc_ids):
        layout = AttentionLayout.build(torch.zeros(2, 8, dtype=torch.long), docs, backend="sdpa")
        rope = model.model.rope(layout.positions, x.dtype)
        got = attn(x, rope, layout)
        # Explicit computation with the module's own projections and RoPE, independent softmax and mask.
        q = apply_rope(attn.q_proj(x).view(2, 8, 4, 8), *rope).transpose(1, 2)
        k = apply_rope(attn.k_proj(x).view(2, 8, kv_heads, 8), *rope).transpose(1, 2)
        v = attn.v_proj(x).view(2, 8, kv_heads, 8).transpose(1, 2)
        _, allowed = reference_positions_and_mask(
            docs if docs is not None else torch.zeros(2, 8, dtype=torch.long)
        )
        expected = attn.o_proj(explicit_attention(q, k, v, allowed).transpose(1, 2).reshape(2, 8, 32))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_backend_falls_back_to_sdpa_and_flash_fails_clearly_on_cpu():
    model = make_model()
    ids = torch.randint(0, 97, (1, 6))
    auto = model(ids, layout=AttentionLayout.build(ids, backend="auto"))
    sdpa = model(ids, layout=AttentionLayout.build(ids, backend="sdpa"))
    torch.testing.assert_close(auto.hidden_states[-1], sdpa.hidden_states[-1], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="sdpa"):
        model(ids, layout=AttentionLayout.build(ids, backend="flash"))
    with pytest.raises(ValueError, match="backend"):
        AttentionLayout.build(ids, backend="xformers")


def test_varlen_boundaries_are_the_document_starts_of_the_flattened_batch():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 2, 2, 2, 3, 3]])
    cu_seqlens, max_seqlen = AttentionLayout.build(torch.zeros(2, 8, dtype=torch.long), doc_ids).varlen()
    assert cu_seqlens.dtype == torch.int32
    assert cu_seqlens.tolist() == [0, 3, 8, 9, 11, 14, 16]  # row 2 starts at 8: documents never span rows
    assert max_seqlen == 5


class FakeFlashAttn:
    """flash-attn's two entry points written with per-document causal SDPA, to run the flash path on CPU."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    def flash_attn_func(self, q, k, v, dropout_p=0.0, causal=False):
        self.calls.append("dense")
        return self._attention(q, k, v, causal)

    @staticmethod
    def _attention(q, k, v, causal):  # (batch, seq, heads, dim) in and out
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=causal,
            enable_gqa=k.shape[2] != q.shape[2],
        )
        return out.transpose(1, 2)

    def flash_attn_varlen_func(
        self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, causal=False
    ):
        self.calls.append("varlen")
        assert cu_seqlens_q.dtype == torch.int32 and torch.equal(cu_seqlens_q, cu_seqlens_k)
        bounds = cu_seqlens_q.tolist()
        assert max_seqlen_q == max_seqlen_k == max(b - a for a, b in zip(bounds, bounds[1:]))
        pieces = [
            self._attention(q[None, a:b], k[None, a:b], v[None, a:b], causal)[0]
            for a, b in zip(bounds, bounds[1:])
        ]
        return torch.cat(pieces)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_flash_code_path_with_packed_documents_equals_sdpa(monkeypatch, request, checkpointing):
    """The flash path's reshapes and cu_seqlens, run on CPU through a stand-in for flash-attn's kernels."""
    import sys
    import types

    from ouro.model.attention import Attention, flash_attn_available

    request.addfinalizer(flash_attn_available.cache_clear)  # it may have cached the stand-in's presence

    fake = FakeFlashAttn()
    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = fake.flash_attn_func, fake.flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(Attention, "_use_flash", staticmethod(lambda q, layout: layout.backend == "flash"))
    model = make_model(num_key_value_heads=2)
    model.set_activation_checkpointing(checkpointing)
    ids = torch.randint(0, 97, (2, 8))
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 2, 2, 2, 3, 3]])
    results = {}
    for backend in ("flash", "sdpa"):
        model.zero_grad()
        out = model(ids, layout=AttentionLayout.build(ids, doc_ids, backend=backend))
        (out.hidden_states[-1].square().mean() + out.gate_logits.mean()).backward()
        results[backend] = out.hidden_states[-1].detach(), [p.grad.clone() for p in model.model.parameters()]
    assert set(fake.calls) == {"varlen"}  # forward (and recomputation) of every layer call went through it
    torch.testing.assert_close(results["flash"][0], results["sdpa"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["flash"][1], results["sdpa"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model(ids, layout=AttentionLayout.build(ids, backend="flash"))
    assert fake.calls[-1] == "dense"


class ListCache:
    """The KV-cache contract: one growing (k, v) slot per (step, layer)."""

    def __init__(self) -> None:
        self.slots: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, step, layer, k, v):
        if (step, layer) in self.slots:
            old_k, old_v = self.slots[step, layer]
            k, v = torch.cat([old_k, k], 2), torch.cat([old_v, v], 2)
        self.slots[step, layer] = (k, v)
        return k, v


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cached_decoding_equals_full_forward(kv_heads):
    model = make_model(num_key_value_heads=kv_heads)
    ids = torch.randint(0, 97, (2, 9))
    full = model(ids)
    cache = ListCache()
    prefill = 5
    out = model(ids[:, :prefill], cache=cache)
    got = [torch.stack(out.hidden_states)]
    for i in range(prefill, 9):
        layout = AttentionLayout(positions=torch.full((2, 1), i))
        got.append(torch.stack(model(ids[:, i : i + 1], layout=layout, cache=cache).hidden_states))
    torch.testing.assert_close(torch.cat(got, 2), torch.stack(full.hidden_states), rtol=1e-5, atol=1e-5)
    assert len(cache.slots) == 3 * 2 and cache.slots[2, 1][0].shape == (2, kv_heads, 9, 8)


# --------------------------------------------------------------------------------------- exits and gates
def spread_gate(model: OuroForCausalLM) -> None:
    """Large gate weights so that the exit distribution varies from token to token."""
    with torch.no_grad():
        model.model.early_exit_gate.weight.normal_(0, 1.0)
        model.model.early_exit_gate.bias.fill_(-0.5)


def test_exit_distribution_sums_to_one_and_matches_hand_loop():
    model = make_model(total_ut_steps=4)
    spread_gate(model)
    out = model(torch.randint(0, 97, (2, 12)))
    p = model.exit_distribution(out)
    assert p.shape == (2, 12, 4)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 12), rtol=0, atol=1e-6)
    torch.testing.assert_close(p.double(), hand_exit_distribution(out.gate_logits), rtol=1e-5, atol=1e-6)
    assert p.std(dim=(0, 1)).min() > 0.01  # not a constant distribution


def test_static_exit_logits():
    model = make_model()
    out = model(torch.randint(0, 97, (2, 6)))
    for step, expected_step in ((0, 0), (1, 1), (-1, 2)):
        logits, steps = model.exit_logits(out, step=step)
        torch.testing.assert_close(logits, model.logits(out, expected_step), rtol=0, atol=0)
        assert (steps == expected_step).all()
    with pytest.raises(ValueError, match="out of range"):
        model.exit_logits(out, step=3)


@pytest.mark.parametrize("q", [0.3, 0.6, 0.9, 1.0])
def test_q_exit_logits_match_hand_selection(q):
    model = make_model(total_ut_steps=4)
    spread_gate(model)
    out = model(torch.randint(0, 97, (2, 12)))
    logits, steps = model.exit_logits(out, threshold=q)
    p = hand_exit_distribution(out.gate_logits.detach())
    all_logits = [model.logits(out, t) for t in range(4)]
    for b in range(2):
        for s in range(12):
            cdf, chosen = 0.0, 3
            if q < 1.0:
                for t in range(4):
                    cdf += float(p[b, s, t])
                    if cdf >= q:
                        chosen = t
                        break
            assert int(steps[b, s]) == chosen
            torch.testing.assert_close(logits[b, s], all_logits[chosen][b, s], rtol=0, atol=0)
    if q < 1.0:
        assert len(steps.unique()) > 1


def test_default_exit_threshold_comes_from_config():
    model = make_model(total_ut_steps=4, early_exit_threshold=0.5)
    spread_gate(model)
    out = model(torch.randint(0, 97, (1, 12)))
    torch.testing.assert_close(model.exit_logits(out)[1], model.exit_logits(out, threshold=0.5)[1])


# ------------------------------------------------------------------------------------------ training aids
def test_activation_checkpointing_gives_the_same_gradients():
    plain = make_model(num_key_value_heads=2).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_activation_checkpointing(True)
    ids = torch.randint(0, 97, (2, 8))
    doc_ids = torch.tensor([[0] * 3 + [1] * 5, [0] * 8])
    weights = torch.randn(3)
    for model in (plain, ckpt):
        out = model(ids, doc_ids=doc_ids)
        loss = sum(weights[t] * model.logits(out, t).pow(2).mean() for t in range(3)) + out.gate_logits.mean()
        loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_flops_per_token_matches_flop_counter():
    config = make_config(num_key_value_heads=2)
    model = OuroForCausalLM(config)
    batch, seq = 2, 16
    ids = torch.randint(0, 97, (batch, seq))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(ids)
        for t in range(out.num_steps):
            model.logits(out, t)
    counted = counter.get_total_flops()
    # The formula counts causal attention as half the square; the MATH kernel computes the full square.
    full_square_extra = (
        config.total_ut_steps * config.num_hidden_layers * 2 * 2 * (seq / 2) * config.hidden_size
    )
    expected = (flops_per_token(config, seq, training=False) + full_square_extra) * batch * seq
    assert counted == pytest.approx(expected, rel=1e-9)
    assert flops_per_token(config, seq) == 3 * flops_per_token(config, seq, training=False)
    assert flops_per_token(config, seq, num_steps=6) == 2 * flops_per_token(config, seq)


# ---------------------------------------------------------------------------------------------- weights
def write_official_checkpoint(
    directory, model: OuroForCausalLM, drop: str | None = None, add: str | None = None
) -> None:
    """config.json with the official field names and one bf16 model.safetensors, written without ouro's saver."""
    c = model.config
    config = {
        "architectures": ["OuroForCausalLM"],
        "model_type": "ouro",
        "auto_map": {
            "AutoConfig": "configuration_ouro.OuroConfig",
            "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM",
        },
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "tie_word_embeddings": False,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": c.num_hidden_layers,
        "layer_types": ["full_attention"] * c.num_hidden_layers,
        "attention_dropout": 0.0,
        "total_ut_steps": c.total_ut_steps,
        "early_exit_threshold": 1.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.55.0",
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3, dtype=torch.bfloat16)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_official_layout_checkpoint_loads_with_identical_logits(tmp_path):
    source = make_model(num_key_value_heads=2)
    write_official_checkpoint(tmp_path, source)
    loaded = load_model(tmp_path)[0].eval()
    assert loaded.config.num_key_value_heads == 2 and loaded.config.total_ut_steps == 3
    rounded = make_model(num_key_value_heads=2)
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in source.state_dict().items()})
    ids = torch.randint(0, 97, (2, 10))
    a, b = loaded(ids), rounded(ids)
    for t in range(3):
        assert torch.equal(loaded.logits(a, t), rounded.logits(b, t))
    assert torch.equal(a.gate_logits, b.gate_logits)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert all(p.device.type == "cpu" for p in loaded.parameters())


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        ("model.layers.1.mlp.up_proj.weight", None, r"missing \['model.layers.1.mlp.up_proj.weight'\]"),
        (
            None,
            "model.layers.7.self_attn.q_proj.weight",
            r"unexpected \['model.layers.7.self_attn.q_proj.weight'\]",
        ),
    ],
)
def test_missing_or_extra_key_fails_clearly(tmp_path, drop, add, message):
    write_official_checkpoint(tmp_path, make_model(), drop=drop, add=add)
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path)[0]


def test_missing_folder_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")[0]
    make_config().save(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)[0]


def test_save_pretrained_bf16_single_file(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (
        tmp_path / "model.safetensors.index.json"
    ).exists()
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = load_model(tmp_path, dtype=torch.bfloat16)[0]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.bfloat16
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_sharded_save_loads_back_exactly(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path, dtype=None, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert sorted(index["weight_map"]) == official_keys(2)
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.state_dict().values())
    loaded = load_model(tmp_path)[0]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # Saving again unsharded removes the old shards, so the folder holds one consistent checkpoint.
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("model-*-of-*.safetensors"))
    assert not (tmp_path / "model.safetensors.index.json").exists()
