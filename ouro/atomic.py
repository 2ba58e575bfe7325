"""Writes that never leave a truncated file under its final name.

Every file `ouro` writes that a later run trusts (checkpoints, ``stage_complete.json``, the run config,
manifests, exports) goes through here: the bytes go to a hidden temporary name in the *same* directory, are
flushed and fsynced, the temporary file is renamed over the final name (atomic on POSIX within one
filesystem), and the directory is fsynced so the rename itself survives a power cut. A crash at any point
leaves either the old file or the new one, never half of one; the leftover temporary file starts with
``.tmp-`` and is removed by `remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: str | Path) -> Path:
    """A unique hidden name next to ``path`` (same directory, hence same filesystem)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it to ``path``.

    On any exception (a full disk included) the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_directory(staging: str | Path, final: str | Path) -> Path:
    """Move a fully written ``staging`` folder to ``final``, replacing an older ``final`` folder.

    ``staging`` must be a sibling of ``final``. The old folder is first renamed aside, then the new one into
    place, then the old one is deleted: a crash in between leaves either the old or the new folder complete
    under ``final`` (or the new one still under its staging name, which `remove_stale_temporaries` cleans).
    """
    staging, final = Path(staging), Path(final)
    for path in sorted(staging.rglob("*"), reverse=True):  # the files' bytes first, then the folders' entries
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            fsync_directory(path)
    fsync_directory(staging)
    old = None
    if final.exists():
        old = temporary_sibling(final)
        os.replace(final, old)
    os.replace(staging, final)
    fsync_directory(final.parent)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return final


def remove_stale_temporaries(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete what interrupted atomic writes left in ``directory`` (files and folders named ``.tmp-*``; with
    ``name``, only the temporaries of that one file or folder: ``.tmp-NAME.*``)."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    pattern = f"{TEMP_PREFIX}{name}.*" if name is not None else f"{TEMP_PREFIX}*"
    for leftover in directory.glob(pattern):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
