"""litdata token shards written byte for byte the same however the work is split.

A prepared folder is a litdata dataset for ``TokensLoader``: chunk files holding one array of token ids each,
an ``index.json`` listing them, plus our ``manifest.json``. litdata's ``optimize`` names chunks by worker rank
and hands files to whichever worker is free, so two runs of the same inputs differ in token order and chunk
layout; it also stamps ``index.json`` with the time. Here the layout is a function of the inputs alone: the
input files are grouped into *units* (consecutive files of at least ``unit_bytes`` bytes), each unit's tokens
are cut into chunks of ``chunk_tokens`` (its last chunk shorter), named ``chunk-{unit}-{k}.bin``, and the index
lists them in unit order. Any worker on any node may write any unit: the bytes are the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ouro.atomic import atomic_open, atomic_write_text

INDEX = "index.json"
#: litdata's ``no_header_numpy`` dtype codes (``litdata.constants._NUMPY_DTYPES_MAPPING``).
_LITDATA_DTYPE_CODE = {"int32": 2, "uint16": 5}


def token_dtype(vocab_size: int, format: str) -> str:
    """``uint16`` when every stored value fits in 16 bits, else ``int32``.

    Pretraining stores token ids (< vocab_size); SFT stores ``id * 2 + trained`` (< 2 * vocab_size).
    """
    largest = vocab_size * 2 if format == "sft" else vocab_size
    return "uint16" if largest <= 1 << 16 else "int32"


@dataclass(frozen=True)
class Unit:
    """Consecutive input files whose tokens are chunked together."""

    index: int
    files: tuple[str, ...]
    bytes: int


def plan_units(files: list[str], sizes: list[int], unit_bytes: int) -> list[Unit]:
    """Group consecutive files until each group holds at least ``unit_bytes`` bytes (the last one may hold less)."""
    units: list[Unit] = []
    current: list[str] = []
    total = 0
    for name, size in zip(files, sizes):
        current.append(name)
        total += size
        if total >= unit_bytes:
            units.append(Unit(len(units), tuple(current), total))
            current, total = [], 0
    if current:
        units.append(Unit(len(units), tuple(current), total))
    return units


def assign_units(units: list[Unit], num_nodes: int) -> list[list[int]]:
    """Unit indices per node, balanced by input bytes (largest first onto the least loaded node)."""
    loads = [0] * num_nodes
    parts: list[list[int]] = [[] for _ in range(num_nodes)]
    for unit in sorted(units, key=lambda u: (-u.bytes, u.index)):
        node = min(range(num_nodes), key=lambda n: (loads[n], n))
        parts[node].append(unit.index)
        loads[node] += unit.bytes
    return [sorted(p) for p in parts]


def chunk_name(unit: int, k: int) -> str:
    return f"chunk-{unit}-{k}.bin"


def write_chunk(path: Path, tokens: np.ndarray) -> dict:
    """One litdata chunk holding one item (the token array): ``uint32`` item count, ``uint32`` offsets, data."""
    data = tokens.tobytes()
    header = np.asarray([1, 12, 12 + len(data)], dtype=np.uint32).tobytes()
    with atomic_open(path, "wb") as handle:
        handle.write(header)
        handle.write(data)
    return {
        "chunk_bytes": len(header) + len(data),
        "chunk_size": 1,
        "dim": int(tokens.size),
        "filename": path.name,
    }


@dataclass
class ChunkWriter:
    """Cuts a stream of token arrays into chunks of exactly ``chunk_tokens`` (the last one shorter)."""

    folder: Path
    unit: int
    chunk_tokens: int
    dtype: str
    chunks: list[dict] = field(default_factory=list)
    _pending: list[np.ndarray] = field(default_factory=list)
    _pending_tokens: int = 0

    def add(self, tokens: np.ndarray) -> None:
        self._pending.append(tokens.astype(self.dtype, copy=False))
        self._pending_tokens += tokens.size
        while self._pending_tokens >= self.chunk_tokens:
            stream = np.concatenate(self._pending)
            self._write(stream[: self.chunk_tokens])
            rest = stream[self.chunk_tokens :]
            self._pending, self._pending_tokens = ([rest] if rest.size else []), int(rest.size)

    def close(self) -> list[dict]:
        if self._pending_tokens:
            self._write(np.concatenate(self._pending))
            self._pending, self._pending_tokens = [], 0
        return self.chunks

    def _write(self, tokens: np.ndarray) -> None:
        self.chunks.append(write_chunk(self.folder / chunk_name(self.unit, len(self.chunks)), tokens))


def index_text(chunks: list[dict], chunk_tokens: int, dtype: str) -> str:
    """The ``index.json`` litdata's ``TokensLoader`` reads (the fields its writer writes, without a timestamp)."""
    config = {
        "chunk_bytes": None,
        "chunk_size": chunk_tokens,
        "compression": None,
        "compression_batch_size": None,
        "compression_level": None,
        "data_format": [f"no_header_numpy:{_LITDATA_DTYPE_CODE[dtype]}"],
        "data_spec": json.dumps([1, {"type": None, "context": None, "children_spec": []}]),
        "encryption": None,
        "ipc_compression": None,
        "item_loader": "TokensLoader",
        "types": "json",
    }
    return json.dumps({"chunks": chunks, "config": config}, sort_keys=True)


def write_index(folder: Path, chunks: list[dict], chunk_tokens: int, dtype: str) -> Path:
    return atomic_write_text(Path(folder) / INDEX, index_text(chunks, chunk_tokens, dtype))
