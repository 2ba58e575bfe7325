"""``hf://`` inputs are listed and read through ``huggingface_hub.HfFileSystem`` (streamed, never downloaded whole).

Tests cannot reach the Hub: a local folder laid out like the Hub (``datasets/<org>/<name>/...``), served by fsspec's
``DirFileSystem``, stands in for ``HfFileSystem`` and runs the same code path.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ouro.data import readers
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare


def test_hub_dataset_streams_through_the_filesystem(tmp_path, monkeypatch):
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    repo = tmp_path / "hub" / "datasets" / "org" / "corpus"
    (repo / "data").mkdir(parents=True)
    docs = [f"document {i} about loops and exits " * (1 + i % 4) for i in range(30)]
    (repo / "data" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))
    pq.write_table(pa.table({"text": docs[20:]}), repo / "data" / "b.parquet")
    (repo / "README.md").write_text("not data")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(train_tokenizer([repo / "data" / "a.jsonl"], vocab_size=300).to_str())

    opened = []

    class StandIn(DirFileSystem):
        def open(self, path, *args, **kwargs):
            opened.append(path)
            return super().open(path, *args, **kwargs)

    monkeypatch.setattr(readers, "_hub_filesystem", lambda: StandIn(str(tmp_path / "hub"), LocalFileSystem()))
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("hf:// must stream, not download the data set")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    manifest = prepare(
        ["hf://org/corpus"], str(tmp_path / "from-hub"), tokenizer=str(tokenizer), num_workers=2
    )
    assert manifest.sources == [
        "hf://datasets/org/corpus/data/a.jsonl",
        "hf://datasets/org/corpus/data/b.parquet",
    ]
    assert manifest.documents == 30 and opened, "the files were opened through the Hub filesystem"
    local = prepare([str(repo / "data")], str(tmp_path / "local"), tokenizer=str(tokenizer), num_workers=1)
    assert local.tokens == manifest.tokens
    for name in ("index.json", *json.loads((tmp_path / "local" / "index.json").read_text())["chunks"]):
        if isinstance(name, dict):
            name = name["filename"]
        assert (tmp_path / "from-hub" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_hub_name_without_data_files(tmp_path, monkeypatch):
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "datasets" / "org" / "empty").mkdir(parents=True)
    (tmp_path / "datasets" / "org" / "empty" / "README.md").write_text("x")
    monkeypatch.setattr(readers, "_hub_filesystem", lambda: DirFileSystem(str(tmp_path), LocalFileSystem()))
    with pytest.raises(readers.DataError, match="has no .txt/.jsonl"):
        readers.expand_inputs(["hf://datasets/org/empty"])
