"""PretrainDataModule: batches, document boundaries, mixture proportions, manifest checks, exact resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TrainingRecorder

from ouro.config import OuroConfig
from ouro.data.batching import IGNORE_INDEX, blocks_to_batch
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.data.pretrain import PretrainDataModule
from ouro.errors import DataError
from ouro.module import OuroLM

WORDS = "alpha beta gamma delta loop model token stream shard chunk exit gate step".split()


def _doc(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    rng = random.Random(0)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": _doc(rng)}) + "\n" for _ in range(100)))
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(train_tokenizer([corpus], vocab_size=200).to_str())
    out = {"tokenizer": tokenizer}
    for name, n in (("big", 600), ("small", 150), ("val", 40)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": _doc(rng)}) + "\n" for _ in range(n)))
        out[name] = root / name
        prepare([str(root / f"{name}.jsonl")], str(out[name]), tokenizer=str(tokenizer), num_workers=1)
    return out


def _vocab(shards) -> int:
    return json.loads((shards["big"] / "manifest.json").read_text())["vocab_size"]


def _reference_doc_ids(row: list[int], eos: int) -> list[int]:
    out, doc = [], 0
    for i in range(len(row)):
        if i > 0 and row[i - 1] == eos:
            doc += 1
        out.append(doc)
    return out


def test_batches_follow_the_contract(shards):
    dm = PretrainDataModule(
        sources=[str(shards["big"])], val_source=str(shards["val"]), seq_len=48, batch_size=3, num_workers=0
    )
    dm.setup("fit")
    assert dm.tokenizer_path == str(shards["big"] / "tokenizer.json")
    batch = next(iter(dm.train_dataloader()))
    ids, labels, doc_ids = batch["input_ids"], batch["labels"], batch["doc_ids"]
    assert ids.shape == labels.shape == doc_ids.shape == (3, 48) and ids.dtype == torch.long
    assert batch["source"].tolist() == [0, 0, 0]
    assert (ids == 0).any(), "48-token rows of short documents contain EOS"
    for row_ids, row_labels, row_docs in zip(ids.tolist(), labels.tolist(), doc_ids.tolist()):
        assert row_docs == _reference_doc_ids(row_ids, 0)
        for i in range(47):  # labels are the next tokens, except the prediction made at an EOS
            assert row_labels[i] == (IGNORE_INDEX if row_ids[i] == 0 else row_ids[i + 1])
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape == (3, 48)


def test_same_shards_serve_every_sequence_length(shards):
    streams = []
    for seq_len in (15, 63):
        dm = PretrainDataModule(
            sources=[str(shards["small"])],
            val_source=None,
            seq_len=seq_len,
            batch_size=1,
            num_workers=0,
            shuffle=False,
            doc_masking=False,
        )
        dm.setup("fit")
        blocks = [torch.cat([b["input_ids"][0], b["labels"][0][-1:]]) for b in dm.train_dataloader()]
        assert all(len(b) == seq_len + 1 for b in blocks)
        streams.append(torch.cat(blocks))
    n = min(len(s) for s in streams) // 64 * 64
    # Unshuffled, both read the same token stream (the block cut only drops each chunk's tail).
    assert n > 500 and torch.equal(streams[0][:n], streams[1][:n])


def test_blocks_to_batch_without_doc_masking():
    blocks = torch.tensor([[5, 0, 7, 8, 0, 9]])
    batch = blocks_to_batch(blocks, eos_id=0, doc_masking=False)
    assert "doc_ids" not in batch and batch["labels"].tolist() == [[0, 7, 8, 0, 9]]
    batch = blocks_to_batch(blocks, eos_id=0)
    assert batch["doc_ids"].tolist() == [[0, 0, 1, 1, 1]]
    assert batch["labels"].tolist() == [[0, IGNORE_INDEX, 8, 0, IGNORE_INDEX]]


def test_mixture_proportions_and_exhaustion_warning(shards):
    dm = PretrainDataModule(
        sources=[str(shards["big"]), str(shards["small"])],
        weights=[3.0, 1.0],
        val_source=None,
        seq_len=8,
        batch_size=4,
        num_workers=0,
        seed=3,
    )
    dm.setup("fit")
    counts = torch.zeros(2)
    for i, batch in enumerate(dm.train_dataloader()):
        counts += torch.bincount(batch["source"], minlength=2)
        if i == 199:
            break
    share = counts[0].item() / counts.sum().item()
    assert counts.sum() == 800
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 800) ** 0.5
    with pytest.warns(UserWarning, match="runs out after"):
        PretrainDataModule(
            sources=[str(shards["big"]), str(shards["small"])],
            weights=[1.0, 9.0],
            val_source=None,
            seq_len=8,
            num_workers=0,
        ).setup("fit")


def _fit(shards, data_kwargs, max_steps, root, ckpt_path=None, save_every=None):
    L.seed_everything(0)
    model = OuroLM(model=OuroConfig.preset("tiny", vocab_size=_vocab(shards)), loss_chunk_size=256)
    recorder = TrainingRecorder()
    callbacks = [recorder]
    if save_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=root, every_n_train_steps=save_every, save_top_k=-1, filename="{step}"
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=bool(save_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=root,
    )
    dm = PretrainDataModule(**data_kwargs)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return recorder.batches, dm


@pytest.mark.parametrize("mixture,workers", [(False, 0), (False, 1), (True, 1), (True, 2)])
def test_resume_mid_epoch_sees_the_same_batches(shards, tmp_path, mixture, workers):
    sources = [str(shards["big"]), str(shards["small"])] if mixture else [str(shards["big"])]
    data = dict(
        sources=sources,
        weights=[0.5, 0.5] if mixture else None,
        val_source=None,
        seq_len=16,
        batch_size=2,
        num_workers=workers,
        seed=7,
    )
    n, k = 7, 3
    full, full_dm = _fit(shards, data, n, tmp_path, save_every=k)
    assert len(full) == n
    resumed, resumed_dm = _fit(
        shards, data, n, tmp_path / "resumed", ckpt_path=str(tmp_path / f"step={k}.ckpt")
    )
    assert len(resumed) == n - k
    for a, b in zip(full[k:], resumed):
        assert torch.equal(a, b)
    assert sum(full_dm.tokens_per_source) == n * 2 * 16
    assert resumed_dm.tokens_per_source == full_dm.tokens_per_source
    if mixture:
        assert min(full_dm.tokens_per_source) > 0, "both sources were drawn"


def test_manifest_mismatch_is_refused(shards, tmp_path):
    vocab = _vocab(shards)
    for model_vocab, message in ((vocab - 10, "would overflow"), (vocab + 512, "the tokenizers differ")):
        model = OuroLM(model=OuroConfig.preset("tiny", vocab_size=model_vocab))
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        dm = PretrainDataModule(sources=[str(shards["big"])], val_source=None, seq_len=8, num_workers=0)
        with pytest.raises(DataError, match=message) as info:
            trainer.fit(model, datamodule=dm)
        assert f"vocab_size is {model_vocab}" in str(info.value) or f"vocab_size {model_vocab}" in str(
            info.value
        )
    model = OuroLM(model=OuroConfig.preset("tiny", vocab_size=vocab, eos_token_id=5))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(DataError, match="eos_token_id 5"):
        trainer.fit(
            model,
            datamodule=PretrainDataModule(
                sources=[str(shards["big"])], val_source=None, seq_len=8, num_workers=0
            ),
        )


def test_missing_source_says_how_to_make_it(tmp_path):
    dm = PretrainDataModule(sources=[str(tmp_path / "nowhere")], val_source=None)
    with pytest.raises(DataError, match="ouro prepare"):
        dm.setup("fit")


def test_resume_across_epoch_boundaries(shards, tmp_path):
    tokens = json.loads((shards["val"] / "manifest.json").read_text())["tokens"]
    data = dict(
        sources=[str(shards["val"])],
        val_source=None,
        seq_len=tokens // 7 - 1,
        batch_size=2,
        num_workers=1,
        seed=5,
    )
    dm = PretrainDataModule(**data)
    dm.setup("fit")
    per_epoch = len(dm.train_dataloader())
    assert 2 <= per_epoch <= 4, "the test needs several epochs within 9 steps"
    n, k = 9, per_epoch + 1  # the checkpoint lies inside the second epoch
    full, _ = _fit(shards, data, n, tmp_path, save_every=k)
    resumed, _ = _fit(shards, data, n, tmp_path / "resumed", ckpt_path=str(tmp_path / f"step={k}.ckpt"))
    assert len(full) == n and len(resumed) == n - k
    for a, b in zip(full[k:], resumed):
        assert torch.equal(a, b)
    assert not torch.equal(full[0], full[per_epoch]), "each epoch reshuffles"


def test_hub_dataset_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="could not list Hub data set 'nobody/nothing'"):
        prepare(["hf://nobody/nothing"], str(tmp_path / "out"), tokenizer=str(tmp_path / "t.json"))


def test_val_source_defaults_to_none_for_own_sources_with_a_message(shards, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        dm = PretrainDataModule(sources=[str(shards["big"])], seq_len=8, num_workers=0)
    assert dm.val_source is None
    assert "data.val_source: none" in caplog.text and "set data.val_source" in caplog.text
    dm.setup("fit")
    assert dm.val_dataloader() == []
    assert PretrainDataModule(sources="builtin").val_source == "builtin"
    assert PretrainDataModule(sources=[str(shards["big"])], val_source=str(shards["val"])).val_source == str(
        shards["val"]
    )


def _blocks_per_source(folder: Path, block: int) -> int:
    """Blocks litdata's TokensLoader cuts: per chunk, its tokens // block (read from index.json independently)."""
    index = json.loads((folder / "index.json").read_text())
    return sum(chunk["dim"] // block for chunk in index["chunks"])


def test_mixture_epoch_ends_at_the_first_exhausted_source_and_restarts_every_source(shards):
    """The documented behaviour of a weighted mixture: within an epoch each source is sampled without
    replacement; the epoch lasts min(blocks_i / weight_i) samples; the next epoch reshuffles and restarts all
    sources, so the large source sees blocks again before reaching its tail."""
    seq_len, batch = 40, 4  # long blocks: distinct contents identify blocks
    dm = PretrainDataModule(
        sources=[str(shards["big"]), str(shards["small"])],
        weights=[1.0, 1.0],
        val_source=None,
        seq_len=seq_len,
        batch_size=batch,
        num_workers=0,
        seed=11,
    )
    dm.setup("fit")
    blocks = [_blocks_per_source(shards[name], seq_len + 1) for name in ("big", "small")]
    assert blocks[0] > 3 * blocks[1]
    loader = dm.train_dataloader()
    assert len(loader) == int(min(b / 0.5 for b in blocks)) // batch
    epochs = []
    for _ in range(2):
        seen: list[list[tuple]] = [[], []]
        for _, batch_data in zip(range(len(loader)), loader):  # Lightning ends the epoch after len(loader)
            rows = torch.cat([batch_data["input_ids"], batch_data["labels"][:, -1:]], 1)
            for row, source in zip(rows.tolist(), batch_data["source"].tolist()):
                seen[source].append(tuple(row))
        epochs.append(seen)
    for seen in epochs:
        total = sum(map(len, seen))  # len(loader) batches, unless a source ran out first
        assert total == len(loader) * batch or (
            total < len(loader) * batch and len(seen[1]) > blocks[1] - batch
        )
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1]), (
            "no repeat in an epoch"
        )
        assert len(seen[1]) <= blocks[1] and len(seen[0]) < blocks[0] / 2, "big never reaches its tail"
    again = set(epochs[0][0]) & set(epochs[1][0])
    assert again, "epoch 2 restarts the big source (a continuation would show only unseen blocks)"
    assert epochs[0][0] != epochs[1][0], "and reshuffles it"
