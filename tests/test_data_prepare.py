"""`ouro prepare`: round trip, manifest, multi-worker shards, atomic output, every bad input."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ouro.data.builtin import train_tokenizer
from ouro.data.manifest import Manifest
from ouro.data.prepare import prepare
from ouro.errors import DataError

WORDS = "alpha beta gamma delta loop model token stream shard chunk exit gate step".split()


def _text(i: int, n: int = 30) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n)) + f" #{i} é ✓"


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": _text(i)}) + "\n" for i in range(200)))
    path = folder / "tokenizer.json"
    path.write_text(train_tokenizer([corpus], vocab_size=300).to_str())
    return path


def read_stream(directory: Path) -> list[int]:
    """Every token of a prepared folder, chunk by chunk (independent of the DataModule)."""
    from litdata import StreamingDataset, TokensLoader

    dataset = StreamingDataset(str(directory), item_loader=TokensLoader(block_size=1), shuffle=False)
    return [int(dataset[i][0]) for i in range(len(dataset))]


def split_docs(tokens: list[int], eos: int) -> list[list[int]]:
    docs, current = [], []
    for t in tokens:
        if t == eos:
            docs.append(current)
            current = []
        else:
            current.append(t)
    assert current == [], "the stream must end with EOS"
    return docs


def test_round_trip_all_formats_multi_worker(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    texts = [_text(i) for i in range(12)]
    texts[3] = "a literal <|endoftext|> inside a document stays text"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(texts[0])
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[1:5]))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps({"body": t}) + "\n" for t in texts[5:8]))
    pq.write_table(pa.table({"body": texts[8:], "n": list(range(4))}), tmp_path / "d.parquet")
    out = tmp_path / "shards"
    manifest = prepare(
        [str(tmp_path / "in"), str(tmp_path / "*.jsonl.gz"), str(tmp_path / "d.parquet")],
        str(out),
        tokenizer=str(tokenizer_file),
        text_field="body",
        num_workers=2,
    )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokens = read_stream(out)
    docs = split_docs(tokens, tokenizer.token_to_id("<|endoftext|>"))
    decoded = sorted(tokenizer.decode(d, skip_special_tokens=False) for d in docs)
    assert decoded == sorted(texts)
    assert manifest.documents == 12 and manifest.tokens == len(tokens)
    assert manifest.vocab_size == tokenizer.get_vocab_size() and manifest.eos_token_id == 0
    assert len(manifest.sources) == 4
    assert Manifest.load(out) == manifest
    assert (out / "tokenizer.json").read_text() == tokenizer_file.read_text()
    assert not list(tmp_path.glob(".shards*")), "staging folders are cleaned up"


def test_rerun_is_a_no_op_and_other_inputs_need_overwrite(tmp_path, tokenizer_file, capsys):
    (tmp_path / "a.txt").write_text(_text(1))
    (tmp_path / "b.txt").write_text(_text(2))
    out = tmp_path / "out"
    first = prepare([str(tmp_path / "a.txt")], str(out), tokenizer=str(tokenizer_file), num_workers=1)
    assert prepare([str(tmp_path / "a.txt")], str(out), tokenizer=str(tokenizer_file)) == first
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(DataError, match="other inputs or settings"):
        prepare([str(tmp_path / "b.txt")], str(out), tokenizer=str(tokenizer_file))
    second = prepare([str(tmp_path / "b.txt")], str(out), tokenizer=str(tokenizer_file), overwrite=True)
    assert second.sources == [str(tmp_path / "b.txt")]
    assert Manifest.load(out) == second


def test_failed_or_interrupted_prepare_leaves_nothing_complete(tmp_path, tokenizer_file):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"text": _text(1)}) + "\n")
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="bad.jsonl:2"):
        prepare([str(good), str(bad)], str(out), tokenizer=str(tokenizer_file), num_workers=2)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # A killed run leaves only its hidden staging folder; the rerun redoes it.
    staging = tmp_path / ".out.incomplete"
    staging.mkdir()
    (staging / "chunk-0-0.bin").write_bytes(b"partial")
    manifest = prepare([str(good)], str(out), tokenizer=str(tokenizer_file))
    assert manifest.documents == 1 and (out / "manifest.json").is_file() and not staging.exists()


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    p = tmp_path / "undecodable.txt"
    p.write_bytes(b"fine line\nbad \xff\xfe byte\n")
    cases["txt_bytes"] = (p, r"undecodable.txt:2: bytes that are not UTF-8")
    p = tmp_path / "undecodable.jsonl"
    p.write_bytes(json.dumps({"text": "ok"}).encode() + b"\n" + b'{"text": "\xff"}\n')
    cases["jsonl_bytes"] = (p, r"undecodable.jsonl:2: bytes that are not UTF-8")
    p = tmp_path / "nofield.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "x"}) + "\n")
    cases["missing_field"] = (p, r"nofield.jsonl:2: no field 'text'")
    p = tmp_path / "notext.jsonl"
    p.write_text(json.dumps({"text": 5}) + "\n")
    cases["not_text"] = (p, r"notext.jsonl:1: field 'text' is int")
    p = tmp_path / "corrupt.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    cases["corrupt_parquet"] = (p, r"corrupt.parquet: not a readable parquet file")
    p = tmp_path / "nocolumn.parquet"
    pq.write_table(pa.table({"other": ["x"]}), p)
    cases["parquet_column"] = (p, r"nocolumn.parquet: no column 'text'")
    p = tmp_path / "nullrow.parquet"
    pq.write_table(pa.table({"text": ["fine", None]}), p)
    cases["parquet_null"] = (p, r"nullrow.parquet row 1: field 'text' is NoneType")
    p = tmp_path / "truncated.jsonl.gz"
    p.write_bytes(gzip.compress((json.dumps({"text": "ok"}) + "\n").encode() * 50)[:40])
    cases["corrupt_gzip"] = (p, r"truncated.jsonl.gz:\d+: unreadable")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "txt_bytes",
        "jsonl_bytes",
        "missing_field",
        "not_text",
        "corrupt_parquet",
        "parquet_column",
        "parquet_null",
        "corrupt_gzip",
    ],
)
def test_bad_input_names_file_and_line_or_skips(tmp_path, tokenizer_file, case):
    path, message = _bad_inputs(tmp_path)[case]
    good = tmp_path / "good.txt"
    good.write_text(_text(3))
    with pytest.raises(DataError, match=message) as info:
        prepare([str(good), str(path)], str(tmp_path / "out"), tokenizer=str(tokenizer_file), num_workers=1)
    assert "--skip_bad" in str(info.value)
    assert not (tmp_path / "out").exists()
    manifest = prepare(
        [str(good), str(path)],
        str(tmp_path / "out"),
        tokenizer=str(tokenizer_file),
        num_workers=1,
        skip_bad=True,
    )
    assert manifest.skipped == 1
    assert manifest.documents >= 1


def test_missing_and_empty_inputs(tmp_path, tokenizer_file):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        prepare([str(tmp_path / "nope.jsonl")], str(tmp_path / "out"), tokenizer=str(tokenizer_file))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        prepare([str(tmp_path / "empty")], str(tmp_path / "out"), tokenizer=str(tokenizer_file))
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(DataError, match="hold no documents"):
        prepare([str(tmp_path / "blank.jsonl")], str(tmp_path / "out"), tokenizer=str(tokenizer_file))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        prepare([str(tmp_path / "blank.jsonl")], str(tmp_path / "out"), tokenizer=str(tmp_path / "tok.json"))
    assert not (tmp_path / "out").exists()


def _old_int32_prepare(path: Path, out: Path, tokenizer_file: Path) -> None:
    """The shards a version-1 prepare wrote: litdata's optimize of int32 arrays, and a version-1 manifest."""
    from litdata import TokensLoader, optimize
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    ids = [t for d in docs for t in tokenizer.encode(d, add_special_tokens=False).ids + [0]]
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(
            _int32_tokens, [ids], str(out), chunk_size=1 << 20, item_loader=TokensLoader(), num_workers=1
        )
    finally:  # optimize sets the process-wide start method to spawn; later tests expect the default
        multiprocessing.set_start_method(start_method, force=True)
    manifest = Manifest.load(out.parent / "new")
    fields = {**manifest.__dict__, "version": 1}
    fields.pop("token_dtype"), fields.pop("chunk_tokens")
    (out / "manifest.json").write_text(json.dumps(fields))


def _int32_tokens(ids):
    import numpy as np

    yield np.asarray(ids, dtype=np.int32)


def test_uint16_tokens_and_old_int32_shards_load_alike(tmp_path, tokenizer_file):
    import torch

    from ouro.data.pretrain import PretrainDataModule

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": _text(i)}) + "\n" for i in range(40)))
    manifest = prepare([str(path)], str(tmp_path / "new"), tokenizer=str(tokenizer_file))
    assert manifest.token_dtype == "uint16" and manifest.version == 2
    index = json.loads((tmp_path / "new" / "index.json").read_text())
    assert index["config"]["data_format"] == ["no_header_numpy:5"]
    chunk_bytes = sum((tmp_path / "new" / c["filename"]).stat().st_size for c in index["chunks"])
    assert chunk_bytes == 12 * len(index["chunks"]) + 2 * manifest.tokens, "2 bytes per token"
    _old_int32_prepare(path, tmp_path / "old", tokenizer_file)
    assert Manifest.load(tmp_path / "old").token_dtype == "int32"
    batches = []
    for folder in ("new", "old"):
        dm = PretrainDataModule(
            sources=[str(tmp_path / folder)], seq_len=31, batch_size=2, num_workers=0, shuffle=False
        )
        dm.setup("fit")
        batches.append(list(dm.train_dataloader()))
    assert len(batches[0]) == len(batches[1]) > 3
    for new, old in zip(*batches):
        assert new["input_ids"].dtype == torch.long
        assert torch.equal(new["input_ids"], old["input_ids"]) and torch.equal(new["labels"], old["labels"])
    assert max(int(b["input_ids"].max()) for b in batches[0]) < manifest.vocab_size


def test_token_dtype_follows_the_vocabulary():
    from ouro.data.shards import token_dtype

    assert token_dtype(49_152, "pretrain") == "uint16"  # Ouro / SmolLM2
    assert token_dtype(65_536, "pretrain") == "uint16"
    assert token_dtype(65_537, "pretrain") == "int32"
    assert token_dtype(32_768, "sft") == "uint16"  # SFT stores id * 2 + trained
    assert token_dtype(49_152, "sft") == "int32"


def test_a_prepare_killed_while_swapping_folders_is_recovered_not_redone(tmp_path, tokenizer_file, capsys):
    """Killed between `replace_directory`'s renames (`--overwrite true`): the old folder aside, the complete new
    one under a hidden name, no output folder. The rerun restores the complete one instead of preparing again."""
    (tmp_path / "a.txt").write_text(_text(1))
    out = tmp_path / "out"
    first = prepare([str(tmp_path / "a.txt")], str(out), tokenizer=str(tokenizer_file), num_workers=1)
    shutil.copytree(out, tmp_path / ".replaced-out.11111111")
    out.rename(tmp_path / ".complete-out.22222222")
    capsys.readouterr()
    assert prepare([str(tmp_path / "a.txt")], str(out), tokenizer=str(tokenizer_file)) == first
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]
