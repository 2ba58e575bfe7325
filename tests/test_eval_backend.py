"""The lm-eval backend against the model's own forward: each exit step, Q-exit, the gate, batching, rolling
log-likelihoods, generation, and the depth sweep running one forward."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from conftest import build_tiny_model
from lm_eval.api.instance import Instance

from ouro.eval.backend import OuroEvalLM
from ouro.eval.scoring import Depth, depth_settings
from ouro.model import OuroForCausalLM

pytestmark = pytest.mark.usefixtures("hf_offline")

PAIRS = [
    ("The capital of France is", " Paris"),
    ("Two plus two", " equals four, not five"),
    ("x", " y"),
    ("A much longer context that goes on for a while, with commas and words,", " and then ends."),
]
TRAINED = 4


@pytest.fixture(scope="module")
def tokenizer(builtin_tokenizer):
    return builtin_tokenizer


@pytest.fixture(scope="module")
def model(tokenizer) -> OuroForCausalLM:
    # A spread of exit probabilities, so that each threshold exits different tokens at different passes.
    return build_tiny_model(gate_std=0.5, vocab_size=tokenizer.get_vocab_size(), early_exit_threshold=0.6)


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i, ("toy", i, 1)) for i, a in enumerate(args)]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


@torch.no_grad()
def reference(model, tokenizer, context: str, continuation: str, step: int | None = None, q: float = 1.0):
    """Independent reference: the whole sequence through ``model.forward``, log-softmax of
    ``model.logits(out, k)`` by hand; under Q-exit the exit CDF is built from sigmoid(gate logits) here."""
    context_ids = encode(tokenizer, context)
    whole = encode(tokenizer, context + continuation)
    n = len(whole) - len(context_ids)
    ids = torch.tensor([whole[:-1]])
    out = model(ids, num_steps=step if step is not None else None)
    per_step = torch.stack(
        [torch.log_softmax(model.logits(out, k)[0].float(), -1) for k in range(out.num_steps)]
    )
    positions = torch.arange(len(whole) - 1 - n, len(whole) - 1)
    targets = torch.tensor(whole[-n:])
    if step is not None:
        exits = torch.full((n,), step - 1)
    else:
        lam = torch.sigmoid(out.gate_logits[0, positions].double())  # (n, T)
        stay = torch.cumprod(1 - lam, dim=-1)
        p = torch.cat([lam[:, :1], lam[:, 1:] * stay[:, :-1]], dim=-1)
        p[:, -1] = stay[:, -2]  # the last pass takes what is left
        cdf = p.cumsum(-1)
        exits = torch.tensor(
            [next(t for t in range(TRAINED) if cdf[i, t] >= q or t == TRAINED - 1) for i in range(n)]
        )
    logprobs = per_step[exits, positions]  # (n, vocab)
    chosen = logprobs.gather(-1, targets[:, None])[:, 0]
    greedy = bool((logprobs.argmax(-1) == targets).all())
    return float(chosen.sum()), greedy, float((exits + 1).float().mean())


def test_each_exit_step_equals_the_forward_including_steps_beyond_training(model, tokenizer):
    settings = depth_settings("1-6", trained_steps=TRAINED)
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, batch_size=3, progress=False)
    for setting in settings:
        lm.active = setting
        got = lm.loglikelihood(requests("loglikelihood", PAIRS))
        for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
            want, want_greedy, _ = reference(model, tokenizer, context, continuation, step=int(setting.value))
            assert logprob == pytest.approx(want, abs=1e-4)
            assert greedy == want_greedy
    # Deeper passes change the scores: the sweep is not one depth reported eight times.
    lm.active = settings[0]
    first = lm.loglikelihood(requests("loglikelihood", PAIRS))
    lm.active = settings[-1]
    assert first != lm.loglikelihood(requests("loglikelihood", PAIRS))


def test_q_exit_and_the_gate_equal_the_forward(model, tokenizer):
    settings = depth_settings("none", "0.3,0.6,0.9,1.0", use_gate=True, trained_steps=TRAINED)
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, batch_size=4, progress=False)
    depths = set()
    for setting in settings:
        lm.active = setting
        q = 0.6 if setting.kind == "gate" else setting.value  # the config's early_exit_threshold
        got = lm.loglikelihood(requests("loglikelihood", PAIRS))
        for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
            want, want_greedy, _ = reference(model, tokenizer, context, continuation, q=q)
            assert logprob == pytest.approx(want, abs=1e-4)
            assert greedy == want_greedy
        stats = lm.stats[("toy", setting.key)]
        want_depth = [reference(model, tokenizer, c, x, q=q)[2] for c, x in PAIRS]
        tokens = [len(encode(tokenizer, c + x)) - len(encode(tokenizer, c)) for c, x in PAIRS]
        assert stats.mean_depth == pytest.approx(sum(d * n for d, n in zip(want_depth, tokens)) / sum(tokens))
        depths.add(round(stats.mean_depth, 6))
    assert len(depths) >= 3  # thresholds exit at different mean depths
    assert lm.stats[("toy", "gate")].mean_depth == lm.stats[("toy", "q0.6")].mean_depth
    assert lm.stats[("toy", "q1")].mean_depth == TRAINED


def test_batched_equals_unbatched(model, tokenizer):
    settings = depth_settings("1,3,5", "0.5", trained_steps=TRAINED)
    one = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, batch_size=1, progress=False)
    many = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, batch_size=4, progress=False)
    for setting in settings:
        one.active = many.active = setting
        a = one.loglikelihood(requests("loglikelihood", PAIRS))
        b = many.loglikelihood(requests("loglikelihood", PAIRS))
        for (la, ga), (lb, gb) in zip(a, b):
            assert la == pytest.approx(lb, abs=1e-5) and ga == gb


def test_a_sweep_runs_one_forward_to_the_deepest_pass(model, tokenizer, monkeypatch):
    calls = []
    original = model.model.step
    monkeypatch.setattr(model.model, "step", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    settings = depth_settings("1-6", "0.5,0.9", use_gate=True, trained_steps=TRAINED)
    lm = OuroEvalLM(
        model=model, tokenizer=tokenizer, settings=settings, batch_size=len(PAIRS), progress=False
    )
    for setting in settings:
        lm.active = setting
        lm.loglikelihood(requests("loglikelihood", PAIRS))
    assert calls == list(range(6))  # one batch, passes 0..5 once, for nine settings


def test_rolling_loglikelihood_scores_every_token_once(model, tokenizer):
    text = "Looped models reuse the same layers for several passes over the same tokens."
    ids = encode(tokenizer, text)
    settings = [Depth("step", 2)]
    whole = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, progress=False)
    windowed = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, max_length=6, progress=False)
    (full,) = whole.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    with torch.no_grad():
        out = model(torch.tensor([[whole.eot_token_id] + ids[:-1]]), num_steps=2)
        logprobs = torch.log_softmax(model.logits(out, 1)[0].float(), -1)
    assert full == pytest.approx(float(logprobs.gather(-1, torch.tensor(ids)[:, None]).sum()), abs=1e-4)
    (short,) = windowed.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    assert windowed.stats[("toy", "step2")].tokens == len(ids)  # windows of 6 cover each token once
    assert short != pytest.approx(full, abs=1e-3)  # less context, another score


@torch.no_grad()
def greedy_reference(model, prompt: list[int], new: int, passes: int, eos: int) -> list[int]:
    """The whole sequence through ``passes`` passes for every new token: no cache, no early exit."""
    ids = list(prompt)
    for _ in range(new):
        out = model(torch.tensor([ids]), num_steps=passes)
        ids.append(int(model.logits(out, -1)[0, -1].argmax()))
        if ids[-1] == eos:
            break
    return ids[len(prompt) :]


def test_generation_at_a_static_step_equals_greedy_decoding_including_beyond_training(model, tokenizer):
    prompts = ["The capital of", "Two plus two equals", "x"]
    settings = depth_settings("2,6", trained_steps=TRAINED)
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, settings=settings, batch_size=2, progress=False)
    gen_kwargs = {"until": ["\n\n"], "max_gen_toks": 6}
    for setting in settings:
        lm.active = setting
        texts = lm.generate_until(requests("generate_until", [(p, gen_kwargs) for p in prompts]))
        for prompt, text in zip(prompts, texts):
            want = tokenizer.decode(
                greedy_reference(model, encode(tokenizer, prompt), 6, int(setting.value), lm.eot_token_id)
            )
            assert text == want.split("\n\n")[0]
        assert lm.stats[("toy", setting.key)].mean_depth == setting.value
    assert model.config.total_ut_steps == TRAINED  # the deeper view did not change the model


def test_generation_under_q_exit_runs_fewer_passes(model, tokenizer):
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, exit_threshold=0.05, progress=False)
    lm.generate_until(requests("generate_until", [("The capital of", {"until": [], "max_gen_toks": 8})]))
    assert 1 <= lm.stats[("toy", "q0.05")].mean_depth < TRAINED


def test_lm_eval_builds_the_backend_from_its_registry(tmp_path, model, tokenizer):
    from lm_eval.api.registry import get_model, model_registry

    model.save_pretrained(tmp_path, dtype=torch.float32)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    lm = get_model("ouro").create_from_arg_string(f"pretrained={tmp_path},exit_step=2", {"device": "cpu"})
    assert lm.active == Depth("step", 2)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS[:1]))
    assert got[0][0] == pytest.approx(reference(model, tokenizer, *PAIRS[0], step=2)[0], abs=1e-4)
    assert "hf" in model_registry and "vllm" in model_registry  # lm-eval's own models are still there
    assert OuroEvalLM(model=model, tokenizer=tokenizer).active == Depth("gate")  # the model as configured
    assert OuroEvalLM(model=model, tokenizer=tokenizer, exit_threshold=0.7).active == Depth("q", 0.7)
    with pytest.raises(ValueError, match="pass one of exit_step, exit_threshold and gate"):
        OuroEvalLM(model=model, tokenizer=tokenizer, exit_step=2, gate=True)


def test_generation_ends_a_row_at_a_token_that_holds_a_stop_string(model, tokenizer):
    prompt = "Two plus two equals"
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, exit_step=2, progress=False)
    tokens = greedy_reference(model, encode(tokenizer, prompt), 8, 2, lm.eot_token_id)
    stop = next(t for t in (tokenizer.decode([i]) for i in tokens[1:]) if t.strip())
    first = next(i for i, t in enumerate(tokens) if stop in tokenizer.decode([t]))
    (text,) = lm.generate_until(requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 8})]))
    assert text == tokenizer.decode(tokens).split(stop)[0]
    assert lm.stats[("toy", "step2")].tokens == first + 1  # not the 8 of max_gen_toks


def test_generation_stops_at_the_configured_end_token_and_the_tokenizers_end_of_turn(model, tokenizer):
    """A chat checkpoint ends its turns with the config's eos_token_id (<|im_end|>), not <|endoftext|>."""
    for prompt in ("Two plus two equals", "The capital of", "x", "A much longer context"):
        tokens = greedy_reference(model, encode(tokenizer, prompt), 8, TRAINED, eos=-1)
        # the first token after the first that the row has not emitted yet: it becomes the end token
        end = next((i for i in range(1, 8) if tokens[i] not in tokens[:i]), None)
        if end is not None:
            break
    assert end is not None, "no greedy row with two distinct tokens"
    chat_model = copy.copy(model)  # the same weights, a config whose end token is that greedy token
    chat_model.config = model.config.replace(eos_token_id=tokens[end])
    lm = OuroEvalLM(model=chat_model, tokenizer=tokenizer, exit_step=TRAINED, progress=False)
    (text,) = lm.generate_until(requests("generate_until", [(prompt, {"until": ["@@@"], "max_gen_toks": 8})]))
    assert text == tokenizer.decode(tokens[: end + 1])
    assert tokenizer.token_to_id("<|im_end|>") in OuroEvalLM(model=model, tokenizer=tokenizer).end_token_ids


def test_a_generation_longer_than_the_window_keeps_the_prompts_end_and_fits(tokenizer, monkeypatch):
    backend = importlib.import_module("ouro.eval.backend")  # where the backend looks `generate` up

    small = build_tiny_model(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=24)
    calls = []
    original = backend.generate
    monkeypatch.setattr(
        backend,
        "generate",
        lambda m, p, **k: calls.append((p, k["max_new_tokens"])) or original(m, p, **k),
    )
    context = "one two three four five six seven eight nine ten eleven twelve"
    lm = OuroEvalLM(model=small, tokenizer=tokenizer, exit_step=1, progress=False)
    (text,) = lm.generate_until(requests("generate_until", [(context, {"until": [], "max_gen_toks": 40})]))
    ((prompts, max_new),) = calls
    assert len(prompts[0]) + max_new == 24 and len(prompts[0]) >= 1
    assert prompts[0] == encode(tokenizer, context)[-len(prompts[0]) :]
    assert isinstance(text, str)


@torch.no_grad()
def test_a_context_that_encodes_to_no_token_is_scored_after_the_prefix_token(model, tokenizer):
    lm = OuroEvalLM(model=model, tokenizer=tokenizer, exit_step=TRAINED, progress=False)
    ((got, _),) = lm.loglikelihood(requests("loglikelihood", [("   ", " Paris")]))
    whole = [lm.prefix_token_id, *encode(tokenizer, "    Paris")]  # the spaces move to the continuation
    out = model(torch.tensor([whole[:-1]]), num_steps=TRAINED)
    logprobs = torch.log_softmax(model.logits(out, TRAINED - 1)[0].float(), -1)
    want = float(logprobs.gather(-1, torch.tensor(whole[1:])[:, None]).sum())  # every token, the first too
    assert got == pytest.approx(want, abs=1e-4)


def test_sampled_generation_is_seeded_per_request(model, tokenizer):
    prompts = ["The capital of", "Two plus two equals", "x"]
    sample = {"until": [], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}

    def run(order, batch_size, seed=1234):
        lm = OuroEvalLM(
            model=model, tokenizer=tokenizer, exit_step=2, batch_size=batch_size, seed=seed, progress=False
        )
        texts = lm.generate_until(requests("generate_until", [(prompts[i], sample) for i in order]))
        return dict(zip(order, texts))

    first = run([0, 1, 2], batch_size=3)
    torch.manual_seed(123)  # the global random state plays no part
    assert run([2, 1, 0], batch_size=1) == first
    assert run([0, 1, 2], batch_size=3, seed=99) != first
