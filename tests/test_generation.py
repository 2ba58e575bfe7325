"""Generation: KV cache per (pass, layer), real early exit, KV sharing, left padding, chat and streaming."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer

from ouro.chat import format_chat
from ouro.generation import LoopKVCache, generate
from ouro.generation.stream import TextStreamer
from ouro.model import OuroForCausalLM

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [3, 4, 5, 6]]


def tiny_model(gate_std: float = 0.5, gate_bias: float = 0.0, seed: int = 0) -> OuroForCausalLM:
    # A spread of exit probabilities so that Q-exit thresholds give different depths per token.
    return build_tiny_model(seed, gate_std=gate_std, gate_bias=gate_bias, eos_token_id=None)


@pytest.fixture(scope="module")
def model() -> OuroForCausalLM:
    return tiny_model()


@torch.no_grad()
def reference_greedy(
    model: OuroForCausalLM, prompt: list[int], new: int, num_steps: int | None = None
) -> list[int]:
    """Independent reference: the full sequence through the model for every token, no cache, no padding."""
    ids = list(prompt)
    for _ in range(new):
        out = model(torch.tensor([ids]), num_steps=num_steps)
        ids.append(int(model.logits(out, -1)[0, -1].argmax()))
    return ids[len(prompt) :]


def count_layer_rows(model: OuroForCausalLM):
    """Rows processed by layer 0 per call (one call per pass)."""
    calls: list[int] = []
    handle = model.model.layers[0].register_forward_hook(
        lambda m, args, out: calls.append(out.shape[0] * out.shape[1])
    )
    return calls, handle


def test_full_depth_equals_the_full_model_without_cache(model):
    for prompt in PROMPTS:
        expected = reference_greedy(model, prompt, 10)
        assert generate(model, prompt, max_new_tokens=10, exit_threshold=1.0).tokens[0] == expected


def test_cached_equals_uncached_greedy_with_left_padding(model):
    cached = generate(model, PROMPTS, max_new_tokens=10, exit_threshold=1.0)
    uncached = generate(model, PROMPTS, max_new_tokens=10, exit_threshold=1.0, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert cached.exit_steps == [[3] * 10] * 3


@pytest.mark.parametrize("sharing", ["full", "last", "mean"])
@pytest.mark.parametrize("q", [1.0, 0.6])
def test_batched_equals_unbatched(model, sharing, q):
    batched = generate(model, PROMPTS, max_new_tokens=8, exit_threshold=q, kv_sharing=sharing)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, prompt, max_new_tokens=8, exit_threshold=q, kv_sharing=sharing)
        assert batched.tokens[i] == alone.tokens[0]
        assert batched.exit_steps[i] == alone.exit_steps[0]


def test_static_exit_runs_only_the_passes_it_needs(model):
    for k in range(model.config.total_ut_steps):
        calls, handle = count_layer_rows(model)
        result = generate(model, PROMPTS[0], max_new_tokens=6, exit_step=k)
        handle.remove()
        # A static exit at pass k is a (k+1)-pass model: compare with the full forward truncated there.
        assert result.tokens[0] == reference_greedy(model, PROMPTS[0], 6, num_steps=k + 1)
        decode_calls = calls[k + 1 :]  # the prompt runs passes 0..k, then one token per call
        assert len(decode_calls) == (k + 1) * 5 and all(rows == 1 for rows in decode_calls)
        assert result.decode_passes == (k + 1) * result.decode_tokens


def test_q_exit_really_skips_passes():
    # Gate bias +20: λ ≈ 1 after the first pass, so every token exits there (CDF ≈ 1 >= q).
    model = tiny_model(gate_bias=20.0)
    calls, handle = count_layer_rows(model)
    result = generate(model, PROMPTS[1], max_new_tokens=6, exit_threshold=0.9)
    handle.remove()
    steps = model.config.total_ut_steps
    assert calls[:steps] == [len(PROMPTS[1])] * steps  # the prompt runs every pass
    assert calls[steps:] == [1] * 5  # each decoded token runs one pass
    assert result.exit_steps == [[0] * 6] and result.mean_depth == 1.0
    assert result.tokens[0] == reference_greedy(model, PROMPTS[1], 6, num_steps=1)


def test_q_exit_depth_and_work_follow_the_threshold(model):
    depths, passes = [], []
    for q in (1.0, 0.9, 0.7, 0.4):
        result = generate(model, PROMPTS, max_new_tokens=10, exit_threshold=q)
        depths.append(result.mean_depth)
        passes.append(result.decode_passes)
        decode_depth = sum(s + 1 for row in result.exit_steps for s in row[1:])
        assert result.decode_passes == decode_depth  # the work done is exactly the depth reported
    assert depths[0] == 4.0
    assert all(a >= b for a, b in zip(depths, depths[1:])) and depths[-1] < depths[0]
    assert all(a >= b for a, b in zip(passes, passes[1:])) and passes[-1] < passes[0]


def test_exit_choice_of_the_first_token_matches_the_model():
    model = tiny_model(gate_std=1.0)
    ids = torch.tensor([PROMPTS[0]])
    for q in (0.3, 0.6, 0.9):
        logits, steps = model.exit_logits(model(ids), threshold=q)
        result = generate(model, PROMPTS[0], max_new_tokens=1, exit_threshold=q)
        assert result.exit_steps[0][0] == int(steps[0, -1])
        assert result.tokens[0][0] == int(logits[0, -1].argmax())


def test_last_and_mean_sharing_use_one_pass_worth_of_cache(model):
    sizes = {
        s: generate(model, PROMPTS, max_new_tokens=4, kv_sharing=s).cache_bytes
        for s in ("full", "last", "mean")
    }
    config = model.config
    capacity = len(PROMPTS[0]) + 4
    per_slot = 2 * len(PROMPTS) * config.num_key_value_heads * capacity * config.head_dim * 4
    assert sizes["full"] == config.total_ut_steps * config.num_hidden_layers * per_slot
    assert sizes["last"] * config.total_ut_steps == sizes["full"]
    assert sizes["mean"] == sizes["last"]


def test_shared_caches_hold_the_last_and_the_mean_pass():
    # After prefill, `last` stores the final pass's keys and `mean` the average over the passes of `full`.
    model = tiny_model()
    config = model.config
    ids = torch.tensor([PROMPTS[0]])
    caches = {}
    for sharing in ("full", "last", "mean"):
        cache = LoopKVCache(config, 1, ids.shape[1], sharing)
        cache.begin(0, ids.shape[1])
        with torch.no_grad():
            model(ids, cache=cache)
        cache.commit()
        caches[sharing] = cache
    full = caches["full"].keys.view(
        config.total_ut_steps, config.num_hidden_layers, *caches["full"].keys.shape[1:]
    )
    torch.testing.assert_close(caches["last"].keys, full[-1])
    torch.testing.assert_close(caches["mean"].keys, full.mean(0), rtol=1e-5, atol=1e-6)


def test_sharing_leaves_the_prompt_pass_exact(model):
    # Sharing changes only what decode steps read; the prompt still uses every pass's own cache.
    full = generate(model, PROMPTS, max_new_tokens=1, kv_sharing="full")
    for sharing in ("last", "mean"):
        assert generate(model, PROMPTS, max_new_tokens=1, kv_sharing=sharing).tokens == full.tokens


def test_sampling_is_seeded_and_top_p_keeps_the_mass(model):
    a = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    b = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    assert a.tokens == b.tokens
    greedy = generate(model, PROMPTS, max_new_tokens=6)
    nucleus = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=1)
    assert nucleus.tokens == greedy.tokens  # a tiny nucleus is just the most likely token


def test_eos_stops_each_row_and_streaming_follows_the_tokens(model):
    free = generate(model, PROMPTS, max_new_tokens=8)
    eos = free.tokens[0][2]  # the third token of row 0 becomes its end token
    seen: list[list[int | None]] = []
    result = generate(model, PROMPTS, max_new_tokens=8, eos_token_id=eos, stream=seen.append)
    for row, tokens in enumerate(free.tokens):
        expected = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        assert result.tokens[row] == expected
    assert len(result.tokens[0]) <= 3
    for row in range(len(PROMPTS)):
        streamed = [step[row] for step in seen if step[row] is not None]
        assert streamed == result.tokens[row]


class _Chars:
    """A toy tokenizer: one token per character, ids 10+ord."""

    def encode(self, text):
        return [10 + ord(c) % 400 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 10) for i in ids)


def test_text_prompts_and_text_streamer(model):
    tok = _Chars()
    out = io.StringIO()
    streamer = TextStreamer(tok, out=out)
    result = generate(model, "abc", tokenizer=tok, max_new_tokens=5, stream=streamer)
    assert result.tokens[0] == generate(model, tok.encode("abc"), max_new_tokens=5).tokens[0]
    assert out.getvalue() == result.texts[0] == tok.decode(result.tokens[0])


def test_chatml_format():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert format_chat(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_chat(messages[1:], add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="exit_step"):
        generate(model, PROMPTS[0], exit_step=1, exit_threshold=0.5)
    with pytest.raises(ValueError, match="exit_step"):
        generate(model, PROMPTS[0], exit_step=4)
    with pytest.raises(ValueError, match="kv_sharing"):
        generate(model, PROMPTS[0], kv_sharing="first")
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, "text without tokenizer")


def test_ouro_generate_command(tmp_path, capsys):
    from tokenizers import Tokenizer

    from ouro.cli import main
    from ouro.hub.export import export

    tok = Tokenizer.from_file(str(write_word_tokenizer(tmp_path / "tokenizer.json")))
    model = tiny_model()
    write_fit_checkpoint(tmp_path / "m.ckpt", model, tokenizer=tmp_path / "tokenizer.json")
    out = export(str(tmp_path / "m.ckpt"), str(tmp_path / "export"), dtype="float32")
    main(
        [
            "generate",
            str(out),
            "w1 w2",
            "--chat",
            "true",
            "--max_new_tokens",
            "5",
            "--exit_threshold",
            "0.7",
            "--kv_sharing",
            "last",
            "--stats",
            "true",
        ]
    )
    captured = capsys.readouterr()
    prompt = tok.encode(format_chat([{"role": "user", "content": "w1 w2"}])).ids
    expected = generate(
        model,
        prompt,
        tokenizer=tok,
        max_new_tokens=5,
        exit_threshold=0.7,
        kv_sharing="last",
        eos_token_id=[2, 0],
    )
    assert captured.out.strip() == expected.texts[0].strip()
    assert "mean exit depth" in captured.err and "(last)" in captured.err
