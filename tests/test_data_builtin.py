"""The built-in offline corpus (stdlib sources + pydoc topics) and its BPE tokenizer."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

import ouro.eval.suite  # noqa: F401 (registers the builtin-<family> data sources)
from ouro.data import builtin, builtin_sources
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
    train, val = (Manifest.load(d) for d in builtin_sources.ensure_builtin_corpus().values())
    assert train.tokens > 100_000 and val.documents >= 1 and train.eos_token_id == 0
    corpus = builtin.builtin_dir() / "corpus"
    names = lambda f: {json.loads(line)["name"] for line in f.read_text().splitlines()}  # noqa: E731
    train_names = set().union(*(names(f) for f in corpus.glob("train-*.jsonl")))
    assert train_names and names(corpus / "val.jsonl") and not train_names & names(corpus / "val.jsonl")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 64) and int(batch["input_ids"].max()) < tokenizer.get_vocab_size()

    def stamps():
        return [
            p.stat().st_mtime_ns
            for p in (Path(dm.tokenizer_path), *builtin_sources.ensure_builtin_corpus().values())
        ]

    first = stamps()
    assert stamps() == first, "second use rebuilds nothing"


# ---------------------------------------------------------------------------------------------- the registry
def _toy_source(dirs: dict, format: str, seq_len: int | None, workers: int | None) -> dict:
    """A built-in source's prepare function: module level, so the DataModule stays picklable."""
    return dirs


@pytest.fixture()
def toy_shards(tmp_path):
    """Two tiny prepared pretraining sources (train and val) with a small BPE tokenizer."""
    from ouro.data.prepare import prepare

    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(200)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(builtin.train_tokenizer([tmp_path / "corpus.jsonl"], vocab_size=300).to_str())
    out = {}
    for split in ("train", "val"):
        out[split] = tmp_path / split
        prepare(str(tmp_path / "corpus.jsonl"), str(out[split]), tokenizer=str(tokenizer), num_workers=1)
    return out


def test_a_new_builtin_source_is_one_registration_and_the_loaders_pickle(toy_shards, monkeypatch):
    import functools
    import pickle

    from ouro.data.builtin_sources import SOURCES, BuiltinSource

    toy = BuiltinSource("toy", ("pretrain",), functools.partial(_toy_source, toy_shards), "a toy source")
    monkeypatch.setitem(SOURCES, "toy", toy)  # what `register(toy)` does, undone after the test
    dm = PretrainDataModule(
        sources=["toy", str(toy_shards["val"])], val_source="toy", seq_len=16, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm._train_dirs[0] == toy_shards["train"] and dm._val_dir == toy_shards["val"]
    loader = dm.train_dataloader()
    # Spawned loader workers receive the dataset by pickle: every class in it must live at module level.
    dataset = pickle.loads(pickle.dumps(loader.dataset))
    assert type(dataset) is type(loader.dataset) and [type(d) for d in dataset._datasets] == [
        type(d) for d in loader.dataset._datasets
    ]
    assert pickle.loads(pickle.dumps(dm.val_dataloader().dataset)).source_index == 0
    assert isinstance(pickle.loads(pickle.dumps(dm)), PretrainDataModule)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (1, 16)


def test_a_builtin_source_without_the_format_says_which_ones_have_it():
    from ouro.data.sft import SFTDataModule
    from ouro.errors import DataError

    with pytest.raises(
        DataError, match=r"'builtin' .* has no 'sft' data.*\['builtin-reasoning', 'builtin-roots'\]"
    ):
        SFTDataModule(sources="builtin", val_source=None).setup("fit")


def test_a_moved_or_copied_cache_serves_the_builtin_data_unchanged(small_cache, monkeypatch, capsys):
    """A cache copied to another node, or mounted at another path, is used as it is: nothing rebuilt, no error."""
    import shutil

    built = builtin_sources.ensure_builtin_corpus(num_workers=1)
    manifest = Manifest.load(built["train"])
    assert manifest.sources and all(s.startswith("$OURO_CACHE/builtin/") for s in manifest.sources)
    for destination, move in (("copied", shutil.copytree), ("moved", shutil.move)):
        target = small_cache.parent / destination
        move(str(small_cache), str(target))
        if destination == "copied":
            shutil.rmtree(small_cache)  # the copy must not lean on the original
        monkeypatch.setenv("OURO_CACHE", str(target))
        stamps = {p: p.stat().st_mtime_ns for p in target.rglob("manifest.json")}
        capsys.readouterr()
        dirs = builtin_sources.ensure_builtin_corpus(num_workers=1)
        assert all(Path(d).is_relative_to(target) for d in dirs.values())
        assert {p: p.stat().st_mtime_ns for p in target.rglob("manifest.json")} == stamps, "nothing rebuilt"
        assert "rebuilding" not in capsys.readouterr().out
        dm = PretrainDataModule(seq_len=32, batch_size=2, num_workers=0)
        dm.prepare_data()
        dm.setup("fit")
        assert Path(dm.tokenizer_path).is_relative_to(target)
        small_cache = target


def test_builtin_shards_of_other_settings_are_rebuilt_not_refused(small_cache, capsys):
    """Shards the cache holds from other inputs (an older ouro's manifest) are ouro's own: a fit rebuilds them
    rather than telling it to pass a flag (`--overwrite`) that `ouro fit` does not have."""
    train = builtin_sources.ensure_builtin_corpus(num_workers=1)["train"]
    record = json.loads((train / "manifest.json").read_text())
    record["sources"] = ["/elsewhere/train-0.jsonl"]
    (train / "manifest.json").write_text(json.dumps(record))
    capsys.readouterr()
    builtin_sources.ensure_builtin_corpus(num_workers=1)
    assert "rebuilding the built-in shards" in capsys.readouterr().out
    assert Manifest.load(train).sources[0].startswith("$OURO_CACHE/")
