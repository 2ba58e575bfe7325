"""Read documents from ``.txt``, ``.jsonl`` / ``.jsonl.gz`` and ``.parquet`` files, folders, globs or Hub data
sets (streamed through ``huggingface_hub.HfFileSystem``, never downloaded whole).

Every error names the file and the line (JSONL, text) or row (parquet). With ``skip_bad`` the bad record (a
whole file when the file itself is unreadable) is skipped and counted instead.
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfFileSystem

from ouro.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
HUB_PREFIX = "hf://"


@dataclass
class ReadStats:
    """Counts of one reader pass."""

    records: int = 0
    skipped: int = 0


def _supported(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def _hub_filesystem():
    """The Hub as an fsspec filesystem (``huggingface_hub.HfFileSystem``): files are read in ranges, on demand."""

    return HfFileSystem()


def _hub_files(spec: str) -> list[str]:
    """The parquet / JSONL / text files of a Hub data set (``hf://org/name`` or ``hf://datasets/org/name``), as
    ``hf://datasets/...`` URLs that the workers stream; nothing is downloaded whole."""
    repo_id = spec[len(HUB_PREFIX) :].removeprefix("datasets/").strip("/")
    try:
        names = _hub_filesystem().find(f"datasets/{repo_id}")
    except Exception as err:
        raise DataError(
            f"could not list Hub data set {repo_id!r} ({type(err).__name__}: {err}); check the name "
            "and your network (and HF_TOKEN for a gated set), or download it and pass the local folder"
        ) from None
    files = sorted(HUB_PREFIX + n for n in names if n.endswith(SUFFIXES))
    if not files:
        raise DataError(f"Hub data set {repo_id!r} has no {'/'.join(SUFFIXES)} files")
    return files


def input_size(name: str) -> int:
    """Bytes of an input file (local path or ``hf://`` URL): what the work is split by."""
    if name.startswith(HUB_PREFIX):
        return int(_hub_filesystem().info(name[len(HUB_PREFIX) :])["size"])
    return Path(name).stat().st_size


def input_stamp(name: str) -> list:
    """Size and modification time of a local input (size alone for the Hub): what tells an edited file."""
    if name.startswith(HUB_PREFIX):
        return [name, input_size(name)]
    stat = Path(name).stat()
    return [name, stat.st_size, stat.st_mtime_ns]


def _open(name: str):
    if name.startswith(HUB_PREFIX):
        return _hub_filesystem().open(name[len(HUB_PREFIX) :], "rb")
    return open(name, "rb")


def expand_inputs(inputs: list[str | Path]) -> list[str]:
    """Files behind a list of files, folders (searched recursively), globs and ``hf://`` data sets: absolute
    paths, and ``hf://datasets/...`` URLs, in a fixed order (sorted within each item, items as given)."""
    if not inputs:
        raise DataError("no inputs given: pass files, folders, globs or hf://<org>/<dataset>")
    files: list[str] = []
    for item in map(str, inputs):
        if item.startswith(HUB_PREFIX):
            files += _hub_files(item)
            continue
        path = Path(item).expanduser()
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            found = [m for m in matches if m.is_file() and _supported(m)]
            if not found:
                raise FileNotFoundError(f"the glob {item!r} matches no {'/'.join(SUFFIXES)} file")
            files += [str(f.resolve()) for f in found]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _supported(p))
            if not found:
                raise DataError(f"the folder {path} holds no {'/'.join(SUFFIXES)} file")
            files += [str(f.resolve()) for f in found]
        elif path.is_file():
            if not _supported(path):
                raise DataError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
            files.append(str(path.resolve()))
        else:
            raise FileNotFoundError(
                f"input {item!r} does not exist (for a Hub data set write hf://<org>/<name>)"
            )
    return list(dict.fromkeys(files))


def _bad(message: str, skip_bad: bool, stats: ReadStats) -> None:
    if not skip_bad:
        raise DataError(message + "; fix or remove it, or pass --skip_bad true to skip bad records")
    stats.skipped += 1


def _read_txt(path: str, skip_bad: bool, stats: ReadStats) -> Iterator[tuple[Any, str]]:
    with _open(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        _bad(f"{path}:{line}: bytes that are not UTF-8 (offset {err.start})", skip_bad, stats)
        return
    yield text, f"{path}"


def _read_jsonl(path: str, field: str, skip_bad: bool, stats: ReadStats) -> Iterator[tuple[Any, str]]:
    lineno = 0
    try:
        with (
            _open(path) as raw_handle,
            gzip.open(raw_handle, "rb") if path.endswith(".gz") else raw_handle as handle,
        ):
            for lineno, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    _bad(f"{where}: bytes that are not UTF-8", skip_bad, stats)
                    continue
                except json.JSONDecodeError as err:
                    _bad(f"{where}: not valid JSON ({err.msg})", skip_bad, stats)
                    continue
                if not isinstance(record, dict) or field not in record:
                    _bad(
                        f"{where}: no field {field!r} (set --text_field to the field that holds the data)",
                        skip_bad,
                        stats,
                    )
                    continue
                yield record[field], where
    except (OSError, EOFError, zlib.error) as err:  # corrupt or truncated gzip
        _bad(f"{path}:{lineno + 1}: unreadable ({err})", skip_bad, stats)


def _read_parquet(path: str, field: str, skip_bad: bool, stats: ReadStats) -> Iterator[tuple[Any, str]]:
    # Imported here, not with the module: pyarrow's allocator starts a thread when the library loads, and a
    # training process (which imports this module) forks its loader workers; a fork beside a running thread
    # risks a deadlocked child, and ``ouro fit`` reads no parquet.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(_open(path) if path.startswith(HUB_PREFIX) else path)
    except (pa.ArrowException, OSError) as err:
        _bad(f"{path}: not a readable parquet file ({err})", skip_bad, stats)
        return
    if field not in parquet.schema_arrow.names:
        _bad(
            f"{path}: no column {field!r} (columns: {parquet.schema_arrow.names}); set --text_field",
            skip_bad,
            stats,
        )
        return
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield value, f"{path} row {row}"
                row += 1
    except (pa.ArrowException, OSError) as err:
        _bad(f"{path} row {row}: unreadable ({err})", skip_bad, stats)


def read_records(path: str | Path, field: str, skip_bad: bool, stats: ReadStats) -> Iterator[tuple[Any, str]]:
    """``(value of field, location)`` for every record of a file; a ``.txt`` file is one record (its text)."""
    path = str(path)
    if not path.startswith(HUB_PREFIX) and not Path(path).is_file():
        _bad(f"{path}: file not found", skip_bad, stats)
        return
    if path.endswith(".txt"):
        reader = _read_txt(path, skip_bad, stats)
    elif path.endswith(".parquet"):
        reader = _read_parquet(path, field, skip_bad, stats)
    else:
        reader = _read_jsonl(path, field, skip_bad, stats)
    for value, where in reader:
        stats.records += 1
        yield value, where


def read_texts(path: str | Path, field: str, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """The non-empty text documents of a file; a non-string value is a bad record."""
    for value, where in read_records(path, field, skip_bad, stats):
        if not isinstance(value, str):
            _bad(f"{where}: field {field!r} is {type(value).__name__}, expected text", skip_bad, stats)
            continue
        if value:
            yield value
