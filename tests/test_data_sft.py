"""SFT: ChatML rendering, assistant-only labels, packing with conversation boundaries, bad conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.data.sft import SFTDataModule
from ouro.errors import DataError


def _conversation(i: int) -> dict:
    messages = [
        {"role": "user", "content": f"what is {i} plus {i}?"},
        {"role": "assistant", "content": f"<think>\n{i} and {i} make {2 * i}\n</think>\nit is {2 * i}"},
    ]
    if i % 2:
        messages.insert(0, {"role": "system", "content": "you answer briefly"})
        messages += [
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "you are welcome"},
        ]
    return {"messages": messages}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sfttok")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": json.dumps(_conversation(i))}) + "\n" for i in range(50)))
    path = folder / "tokenizer.json"
    path.write_text(train_tokenizer([corpus], vocab_size=300).to_str())
    return path


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_assistant_only_labels_and_conversation_boundaries(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    conversations = [_conversation(i) for i in range(20)]
    out = tmp_path / "sft"
    manifest = prepare(
        [str(_write(tmp_path / "chat.jsonl", conversations))],
        str(out),
        tokenizer=str(tokenizer_file),
        format="sft",
        seq_len=127,
        num_workers=1,
        chunk_tokens=512,
    )
    assert manifest.format == "sft" and manifest.block_size == 128 and manifest.documents == 20
    dm = SFTDataModule(sources=[str(out)], num_workers=0, batch_size=1, shuffle=False)
    dm.setup("fit")
    assert dm.seq_len == 127
    im_start, eos = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|endoftext|>")
    trained_text, seen = [], 0
    for batch in dm.train_dataloader():
        ids, labels, docs = batch["input_ids"][0], batch["labels"][0], batch["doc_ids"][0]
        assert ids[0] == im_start, "blocks start with a whole conversation"
        # Each conversation is one document: the ids change exactly after each EOS.
        expected = torch.cat([torch.zeros(1, dtype=torch.long), (ids[:-1] == eos).long().cumsum(0)])
        assert torch.equal(docs, expected)
        kept = labels[labels != -100]
        trained_text.append(tokenizer.decode(kept.tolist(), skip_special_tokens=False))
        seen += int((ids == im_start).sum())
    # Independent reference: the labelled tokens spell exactly the assistant turns, each closed by <|im_end|>.
    reference = "".join(
        m["content"] + "<|im_end|>" for c in conversations for m in c["messages"] if m["role"] == "assistant"
    )
    assert "".join(trained_text) == reference
    assert "plus" not in "".join(trained_text) and "briefly" not in "".join(trained_text)
    assert seen == sum(len(c["messages"]) for c in conversations)


def test_truncation_and_seq_len_mismatch(tmp_path, tokenizer_file):
    long = {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "word " * 300}]}
    out = tmp_path / "sft"
    manifest = prepare(
        [str(_write(tmp_path / "c.jsonl", [long, _conversation(2)]))],
        str(out),
        tokenizer=str(tokenizer_file),
        format="sft",
        seq_len=63,
        num_workers=1,
    )
    assert manifest.truncated == 1 and manifest.documents == 2
    dm = SFTDataModule(sources=[str(out)], seq_len=127, num_workers=0)
    with pytest.raises(DataError, match="packed for seq_len 63"):
        dm.setup("fit")
    dm = SFTDataModule(sources=[str(out)], num_workers=0, shuffle=False)
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))
    assert first["input_ids"].shape == (1, 63)
    # The truncated assistant turn trains up to the cut; the EOS that closes the block does not count.
    assert first["labels"][0, -2] != -100 and first["labels"][0, -1] == -100


@pytest.mark.parametrize(
    "row,message",
    [
        ({"messages": "hello"}, "must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "needs a role"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "has no text 'content'"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>a"}]},
            "unbalanced",
        ),
        ({"conversation": []}, "no field 'messages'"),
        ("{broken", "not valid JSON"),
    ],
)
def test_malformed_conversation_names_the_line_or_is_skipped(tmp_path, tokenizer_file, row, message):
    path = _write(tmp_path / "chat.jsonl", [_conversation(1), row, _conversation(2)])
    with pytest.raises(DataError, match=rf"chat.jsonl:2: .*{message}"):
        prepare([str(path)], str(tmp_path / "out"), tokenizer=str(tokenizer_file), format="sft", seq_len=127)
    manifest = prepare(
        [str(path)],
        str(tmp_path / "out"),
        tokenizer=str(tokenizer_file),
        format="sft",
        seq_len=127,
        skip_bad=True,
    )
    assert manifest.skipped == 1 and manifest.documents == 2


def test_pretrain_module_refuses_sft_shards(tmp_path, tokenizer_file):
    from ouro.data.pretrain import PretrainDataModule

    out = tmp_path / "sft"
    prepare(
        [str(_write(tmp_path / "c.jsonl", [_conversation(1)]))],
        str(out),
        tokenizer=str(tokenizer_file),
        format="sft",
        seq_len=31,
    )
    with pytest.raises(DataError, match="holds 'sft' shards"):
        PretrainDataModule(sources=[str(out)], val_source=None).setup("fit")


def _segments(i: int) -> dict:
    return {
        "segments": [
            {"text": f"what is {i} plus {i}?", "train": False},
            {"text": f" it is {2 * i}", "train": True},
            {"text": " and twice that?", "train": False},
            {"text": f" {4 * i}", "train": True},
        ]
    }


def test_segment_records_train_exactly_their_train_segments(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    records = [_segments(i) for i in range(12)]
    out = tmp_path / "segments"
    manifest = prepare(
        [str(_write(tmp_path / "seg.jsonl", records))],
        str(out),
        tokenizer=str(tokenizer_file),
        format="sft",
        text_field="segments",
        seq_len=63,
        num_workers=1,
    )
    assert manifest.documents == 12 and manifest.text_field == "segments"
    dm = SFTDataModule(sources=[str(out)], num_workers=0, batch_size=1, shuffle=False)
    dm.setup("fit")
    eos = tokenizer.token_to_id("<|endoftext|>")
    inputs, trained = [], []
    for batch in dm.train_dataloader():
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        inputs += [t for t in ids.tolist() if t != eos]
        trained += labels[labels != -100].tolist()

    # Independent reference: each segment encoded on its own, concatenated; the train ones are the labels.
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    whole = [t for r in records for s in r["segments"] for t in encode(s["text"])]
    assert inputs[: len(whole)] == whole
    assert trained == [t for r in records for s in r["segments"] if s["train"] for t in encode(s["text"])]


@pytest.mark.parametrize(
    "segments, message",
    [
        ([{"text": "a", "train": False}], "no segment has 'train': true"),
        ([{"text": "a", "train": "yes"}], "segment 0 needs 'train': true or false"),
        ([{"text": "a", "train": True}, {"text": 3, "train": True}], "segment 1 needs a 'text' string"),
    ],
)
def test_malformed_segments_name_the_line(tmp_path, tokenizer_file, segments, message):
    path = _write(tmp_path / "seg.jsonl", [_segments(1), {"segments": segments}])
    with pytest.raises(DataError, match=rf"seg.jsonl:2: {message}"):
        prepare(
            [str(path)],
            str(tmp_path / "out"),
            tokenizer=str(tokenizer_file),
            format="sft",
            text_field="segments",
            seq_len=63,
        )
    assert not (tmp_path / "out" / "manifest.json").exists()
