"""`ouro prepare` under faults: same bytes for any worker split, kill -9, a full disk, --overwrite safety."""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.errors import DataError

WORDS = "alpha beta gamma delta loop model token stream shard chunk exit gate step".split()
CHUNK = 64  # tokens per chunk; also the bytes per unit, so every input file below is its own unit


def _doc(i: int) -> str:
    return " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(5 + i % 17)) + f" #{i}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    (root / "in").mkdir()
    for f in range(6):
        docs = [_doc(f * 100 + i) for i in range(15)]
        (root / "in" / f"part-{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(train_tokenizer(sorted((root / "in").iterdir()), vocab_size=300).to_str())
    reference = root / "reference"
    prepare([str(root / "in")], str(reference), tokenizer=str(tokenizer), num_workers=1, chunk_tokens=CHUNK)
    return {"root": root, "inputs": str(root / "in"), "tokenizer": str(tokenizer), "reference": reference}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _prepare(corpus, out: Path, **kwargs):
    kwargs.setdefault("num_workers", 1)
    return prepare([corpus["inputs"]], str(out), tokenizer=corpus["tokenizer"], chunk_tokens=CHUNK, **kwargs)


def test_reference_has_several_units_and_chunks(corpus):
    index = json.loads((corpus["reference"] / "index.json").read_text())
    units = {c["filename"].split("-")[1] for c in index["chunks"]}
    assert len(units) == 6 and len(index["chunks"]) > 6, "several units, some with several chunks"
    assert "updated_at" not in index


@pytest.mark.parametrize("workers", [2, 3])
def test_same_bytes_whatever_the_workers(corpus, tmp_path, workers):
    _prepare(corpus, tmp_path / "out", num_workers=workers)
    assert folder_bytes(tmp_path / "out") == folder_bytes(corpus["reference"])


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import ouro.data.shards as shards
    import ouro.data.staging as staging
    from ouro.data.prepare import prepare

    inputs, out, tokenizer, chunk, point = sys.argv[1:6]
    calls = [0]
    real_write_chunk, real_atomic_write_text = shards.write_chunk, staging.atomic_write_text

    class _DiesMidWrite:  # writes part of the chunk, then the process is killed
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def write_chunk(path, tokens):
        calls[0] += 1
        if point == "chunk" and calls[0] == 10:  # inside the second unit
            real_open = shards.atomic_open

            def dying_open(p, mode="wb"):
                import contextlib

                @contextlib.contextmanager
                def manager():
                    with real_open(p, mode) as handle:
                        yield _DiesMidWrite(handle)

                return manager()

            shards.atomic_open = dying_open
        return real_write_chunk(path, tokens)

    def atomic_write_text(path, text):
        if point == "manifest" and str(path).endswith("manifest.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_atomic_write_text(path, text)

    shards.write_chunk, staging.atomic_write_text = write_chunk, atomic_write_text
    prepare([inputs], out, tokenizer=tokenizer, num_workers=1, chunk_tokens=int(chunk))
    """
)


@pytest.mark.parametrize("point", ["chunk", "manifest"])
def test_kill_9_leaves_no_manifest_and_the_rerun_gives_the_same_bytes(corpus, tmp_path, point):
    out = tmp_path / "out"
    args = [corpus["inputs"], str(out), corpus["tokenizer"], str(CHUNK), point]
    result = subprocess.run([sys.executable, "-c", _KILLER, *args], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert not out.exists(), "nothing under the final name"
    assert not list(tmp_path.rglob("manifest.json")) or point == "manifest"
    staging = tmp_path / ".out.incomplete"
    assert staging.is_dir()
    if point == "manifest":  # killed while the manifest was being written: no complete manifest anywhere
        assert not (staging / "manifest.json").exists()
    done = list((staging / ".ouro-prepare" / "units").glob("*.json"))
    assert (len(done) == 6) if point == "manifest" else (0 < len(done) < 6)
    _prepare(corpus, out)
    assert folder_bytes(out) == folder_bytes(corpus["reference"])
    assert not staging.exists()


class _FullDiskAfter:
    """``atomic_open`` for shard chunks that raises ENOSPC partway into the n-th chunk."""

    def __init__(self, real, n: int) -> None:
        self.real, self.n, self.calls = real, n, 0

    @contextlib.contextmanager
    def __call__(self, path, mode="wb"):
        self.calls += 1
        with self.real(path, mode) as handle:
            if self.calls >= self.n:
                handle.write(b"\0" * 7)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield handle


def test_full_disk_names_the_path_and_space_keeps_earlier_shards(corpus, tmp_path, monkeypatch, capsys):
    import ouro.data.shards as shards
    from ouro.cli import main

    out = tmp_path / "out"
    monkeypatch.setattr(shards, "atomic_open", _FullDiskAfter(shards.atomic_open, 10))
    argv = ["prepare", corpus["inputs"], str(out), "--tokenizer", corpus["tokenizer"]]
    argv += ["--chunk_tokens", str(CHUNK), "--num_workers", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1, "a fault of the machine (input errors exit 2)"
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    assert "no space left on the device writing" in message and "chunk-" in message
    assert "need about" in message and "rerun" in message and "no manifest.json was written" in message
    assert not out.exists()
    staging = tmp_path / ".out.incomplete"
    records = sorted((staging / ".ouro-prepare" / "units").glob("*.json"))
    assert records, "the units finished before the disk filled are kept"
    for record in records:
        for chunk in json.loads(record.read_text())["chunks"]:
            written = (staging / chunk["filename"]).read_bytes()
            assert written == (corpus["reference"] / chunk["filename"]).read_bytes(), "earlier shards intact"
    assert not list(staging.glob(".tmp-*")), "the cut-short chunk left no partial file"
    monkeypatch.undo()
    _prepare(corpus, out)
    assert folder_bytes(out) == folder_bytes(corpus["reference"])


def test_overwrite_replaces_only_what_a_prepare_wrote(corpus, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="was not written by `ouro prepare`"):
        _prepare(corpus, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not list(tmp_path.glob(".mine*"))
    out = tmp_path / "out"
    _prepare(corpus, out)
    (out / "extra.bin").write_bytes(b"old")
    _prepare(corpus, out, overwrite=True)
    assert folder_bytes(out) == folder_bytes(corpus["reference"]), "a prepared folder is redone whole"


def test_two_nodes_equal_one_machine(corpus, tmp_path):
    """Two "nodes" (`ouro prepare --num_nodes env` with OURO_NUM_NODES=2 and a rank) share the output folder: each
    writes its units,
    the last to finish writes the index and manifest; the folder is byte for byte the one-machine prepare."""
    import os

    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ouro.cli", "prepare", corpus["inputs"], str(out)]
            + ["--tokenizer", corpus["tokenizer"], "--chunk_tokens", str(CHUNK), "--num_workers", "1"]
            + ["--num_nodes", "env"],
            env={**os.environ, "OURO_NUM_NODES": "2", "OURO_NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("prepared " in log for log in logs) == 1, "exactly one node merged"
    assert folder_bytes(out) == folder_bytes(corpus["reference"])
    assert not (tmp_path / ".out.incomplete").exists()


def test_node_split_from_the_environment_only_when_asked(monkeypatch):
    from ouro.data.nodes import node_split

    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    assert node_split() == (1, 0), "a job in a SLURM array does not split a prepare unless asked"
    assert node_split("env") == (4, 2)
    monkeypatch.setenv("OURO_NUM_NODES", "3")
    monkeypatch.setenv("OURO_NODE_RANK", "1")
    assert node_split("env") == (3, 1)
    for name in ("OURO_NUM_NODES", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name)
    with pytest.raises(DataError, match="none of OURO_NUM_NODES"):
        node_split("env")


def test_one_node_alone_writes_no_manifest(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert _prepare(corpus, out, num_nodes=2, node_rank=1) is None
    assert "units remain for the other nodes" in capsys.readouterr().out
    assert not out.exists()
    _prepare(corpus, out, num_nodes=2, node_rank=0)
    assert folder_bytes(out) == folder_bytes(corpus["reference"])
    with pytest.raises(DataError, match="node_rank 2 of num_nodes 2"):
        _prepare(corpus, tmp_path / "other", num_nodes=2, node_rank=2)


_PARENT = (
    "import sys; from ouro.data.prepare import prepare; "
    "prepare([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], num_workers=2, chunk_tokens=int(sys.argv[4]))"
)


def test_kill_9_of_the_prepare_takes_its_workers_and_leaves_no_temp_files(corpus, tmp_path):
    import os
    import signal
    import time

    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    units = tmp_path / ".out.incomplete" / ".ouro-prepare" / "units"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARENT, corpus["inputs"], str(out), corpus["tokenizer"], str(CHUNK)],
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    deadline = time.monotonic() + 60
    while (
        not (units.is_dir() and any(units.iterdir())) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert children and not alive, "the workers died with the prepare"
    assert not out.exists() and not list(scratch.iterdir()), "nothing in the temp dir"
    _prepare(corpus, out)
    assert folder_bytes(out) == folder_bytes(corpus["reference"])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
