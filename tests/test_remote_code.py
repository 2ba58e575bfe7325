"""The exported remote code under transformers (AutoModelForCausalLM, trust_remote_code, local files only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer  # noqa: E402

from ouro.chat import format_chat  # noqa: E402
from ouro.checkpoints import load_model  # noqa: E402
from ouro.generation import generate  # noqa: E402
from ouro.hub.export import export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    # Two KV heads for four query heads: the remote code's grouped-query path is exercised too.
    net = build_tiny_model(gate_std=0.5, num_key_value_heads=2, eos_token_id=None)
    tokenizer = write_word_tokenizer(root / "tokenizer.json")
    ckpt = write_fit_checkpoint(root / "model.ckpt", net, tokenizer=tokenizer, tokens_seen=10)
    out = export(str(ckpt), str(root / "export"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        out, trust_remote_code=True, local_files_only=True, dtype=torch.float32
    ).eval()
    ours = load_model(out)[0].eval()
    return out, hf, ours


def test_logits_of_every_exit_step_match_ouro(exported):
    out, hf, ours = exported
    assert type(hf).__name__ == "OuroForCausalLM" and hf.config.model_type == "ouro"
    ids = torch.randint(3, 512, (2, 13))
    with torch.no_grad():
        ref = ours(ids)
        full = hf(ids, use_cache=False)
        for step in range(4):
            expected = ours.logits(ref, step)
            torch.testing.assert_close(
                hf(ids, exit_at_step=step, use_cache=False).logits, expected, rtol=0, atol=1e-5
            )
            torch.testing.assert_close(hf.lm_head(full.step_hidden_states[step]), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(full.exit_probs, ours.exit_distribution(ref), rtol=0, atol=1e-5)
        for q in (0.3, 0.6, 0.9):
            logits, steps = ours.exit_logits(ref, threshold=q)
            result = hf(ids, exit_threshold=q, use_cache=False)
            assert torch.equal(result.exit_steps, steps)
            torch.testing.assert_close(result.logits, logits, rtol=0, atol=1e-5)


def test_left_padded_rows_match_unpadded(exported):
    out, hf, ours = exported
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    ids = torch.tensor([rows[0], [0] * 4 + rows[1]])
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])
    with torch.no_grad():
        padded = hf(ids, attention_mask=mask, exit_at_step=3, use_cache=False).logits
        for i, row in enumerate(rows):
            alone = ours.logits(ours(torch.tensor([row])), 3)[0]
            torch.testing.assert_close(padded[i, -len(row) :], alone, rtol=0, atol=1e-5)


def test_labels_loss_is_the_expected_cross_entropy(exported):
    out, hf, ours = exported
    ids = torch.randint(3, 512, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        loss = hf(ids, labels=labels).loss
        ref = ours(ids)
        probs = ours.exit_distribution(ref)[:, :-1]
        targets = labels[:, 1:]
        ce = torch.stack(
            [
                F.cross_entropy(
                    ours.logits(ref, t)[:, :-1].flatten(0, 1),
                    targets.flatten(),
                    ignore_index=-100,
                    reduction="none",
                ).view_as(targets)
                for t in range(4)
            ],
            -1,
        )
        valid = targets != -100
        expected = ((ce * probs).sum(-1) * valid).sum() / valid.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def _tokenizer(out):
    return transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True, local_files_only=True)


@pytest.mark.parametrize("q", [1.0, 0.6])
def test_batched_generate_equals_unbatched_and_ouro(exported, q):
    out, hf, ours = exported
    tok = _tokenizer(out)
    texts = ["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11", "w12"]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"].min() == 0  # really padded
    assert "token_type_ids" not in batch  # transformers 4.x generate would refuse them
    with torch.no_grad():
        together = hf.generate(**batch, max_new_tokens=8, do_sample=False, exit_threshold=q)[
            :, batch["input_ids"].shape[1] :
        ]
        for i, text in enumerate(texts):
            single = tok(text, return_tensors="pt")
            alone = hf.generate(**single, max_new_tokens=8, do_sample=False, exit_threshold=q)
            assert together[i].tolist() == alone[0, single["input_ids"].shape[1] :].tolist()
            # The same decoding rule as `ouro generate` (full KV sharing): an independent implementation agrees.
            mine = generate(ours, single["input_ids"][0].tolist(), max_new_tokens=8, exit_threshold=q)
            assert mine.tokens[0] == alone[0, single["input_ids"].shape[1] :].tolist()


def test_cached_generate_equals_uncached(exported):
    out, hf, ours = exported
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        cached = hf.generate(ids, max_new_tokens=6, do_sample=False)
        uncached = hf.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_remote_early_exit_skips_passes(exported):
    out, hf, ours = exported
    calls: list[int] = []
    handle = hf.model.layers[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[1]))
    bias = hf.model.early_exit_gate.bias.data.clone()
    hf.model.early_exit_gate.bias.data.fill_(20.0)  # every token exits after its first pass
    try:
        with torch.no_grad():
            hf.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False, exit_threshold=0.9)
            assert calls == [3] * 4 + [1] * 4  # the prompt runs 4 passes, each new token one
            calls.clear()
            hf.generate(torch.tensor([[5]]), max_new_tokens=3, do_sample=False, exit_threshold=0.9)
            assert calls == [1] * 4 + [1] * 2  # a one-token prompt is still a prompt: every pass
    finally:
        hf.model.early_exit_gate.bias.data.copy_(bias)
        handle.remove()


def test_chat_template_matches_ouro(exported):
    out, hf, ours = exported
    tok = _tokenizer(out)
    messages = [{"role": "system", "content": "w1"}, {"role": "user", "content": "w2 w3"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == format_chat(messages)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
