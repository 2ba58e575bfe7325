"""The built-in offline corpus (stdlib sources + pydoc topics) and its BPE tokenizer."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from ouro.data import builtin
from ouro.data.manifest import Manifest
from ouro.data.pretrain import PretrainDataModule


def test_corpus_is_this_pythons_stdlib_and_docs():
    docs = dict(builtin.corpus_documents())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert docs["stdlib/json/decoder.py"] == (stdlib / "json" / "decoder.py").read_text()
    assert not any("/test/" in name or "site-packages" in name for name in docs)
    from pydoc_data.topics import topics

    assert docs["pydoc/assignment"] == topics["assignment"]
    assert len(docs) > 500 and sum(map(len, docs.values())) > 5_000_000


@pytest.fixture()
def small_cache(tmp_path, monkeypatch):
    """The real pipeline on a slice of the real corpus (the full build takes ~15 s on 2 cores)."""
    monkeypatch.setenv("OURO_CACHE", str(tmp_path / "cache"))
    everything = builtin.corpus_documents()
    monkeypatch.setattr(builtin, "corpus_documents", lambda: everything[:150] + everything[-40:])
    return tmp_path / "cache"


def test_builtin_tokenizer_and_shards(small_cache):
    from tokenizers import Tokenizer

    dm = PretrainDataModule(seq_len=64, batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert Path(dm.tokenizer_path).is_relative_to(small_cache / "builtin")
    tokenizer = Tokenizer.from_file(dm.tokenizer_path)
    assert [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tokenizer.get_vocab_size() <= builtin.BUILTIN_VOCAB_SIZE
    source = (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text()
    assert tokenizer.decode(tokenizer.encode(source).ids) == source  # byte-level: lossless
    train, val = (Manifest.load(d) for d in builtin.ensure_builtin_corpus().values())
    assert train.tokens > 100_000 and val.documents >= 1 and train.eos_token_id == 0
    corpus = builtin.builtin_dir() / "corpus"
    names = lambda f: {json.loads(line)["name"] for line in f.read_text().splitlines()}  # noqa: E731
    train_names = set().union(*(names(f) for f in corpus.glob("train-*.jsonl")))
    assert train_names and names(corpus / "val.jsonl") and not train_names & names(corpus / "val.jsonl")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 64) and int(batch["input_ids"].max()) < tokenizer.get_vocab_size()

    def stamps():
        return [
            p.stat().st_mtime_ns for p in (Path(dm.tokenizer_path), *builtin.ensure_builtin_corpus().values())
        ]

    first = stamps()
    assert stamps() == first, "second use rebuilds nothing"
