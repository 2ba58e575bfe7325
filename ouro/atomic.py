"""Writes that never leave a truncated file under its final name.

Every file `ouro` writes that a later run trusts (checkpoints, ``stage_complete.json``, the run config,
manifests, exports) goes through here: the bytes go to a hidden temporary name in the *same* directory, are
flushed and fsynced, the temporary file is renamed over the final name (atomic on POSIX within one
filesystem), and the directory is fsynced so the rename itself survives a power cut. A crash at any point
leaves either the old file or the new one, never half of one; the leftover temporary file starts with
``.tmp-`` and is removed by `remove_stale_temporaries`.

Folders (exports, prepared shards, sharded checkpoints) cannot be renamed over an existing folder:
`replace_directory` takes three renames, and `recover_directory` finishes one that a kill interrupted.
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


#: A complete new folder waiting to take its final name (``.complete-NAME.xxxxxxxx``): restored, never deleted.
COMPLETE_PREFIX = ".complete-"
#: A complete old folder renamed aside to make room for the new one (``.replaced-NAME.xxxxxxxx``).
REPLACED_PREFIX = ".replaced-"


def _sibling(path: Path, prefix: str) -> Path:
    return path.with_name(f"{prefix}{path.name}.{uuid.uuid4().hex[:8]}")


def _rename(source: Path, target: Path) -> None:
    """``os.replace`` plus an fsync of the folder, so the rename survives a power cut."""
    os.replace(source, target)
    fsync_directory(target.parent)


def _delete(path: Path, final: Path) -> None:
    """Remove ``path``, a folder set aside for ``final``: first renamed to a temporary name of ``final``, so that a
    kill in the middle of the removal leaves a ``.tmp-FINAL.*`` leftover (removed later) rather than a
    half-deleted folder under a name that counts."""
    doomed = temporary_sibling(final)
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return  # another process (rank) removed it
    if doomed.is_dir():
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        doomed.unlink(missing_ok=True)


def replace_directory(staging: str | Path, final: str | Path) -> Path:
    """Move a fully written ``staging`` folder to ``final``, replacing an older ``final`` folder.

    ``staging`` must be a sibling of ``final``. Three renames, each made durable before the next: the staging
    folder becomes ``.complete-NAME.*`` (complete from then on), the old ``final`` becomes ``.replaced-NAME.*``,
    the complete one becomes ``final``; then the old one is deleted. Between the second and third rename no
    ``final`` exists, so every writer (and `remove_stale_temporaries`) first calls `recover_directory`, which
    finishes an interrupted replace: ``final`` holds the old or the new folder, complete, whenever a kill hits.
    """
    staging, final = Path(staging), Path(final)
    for path in sorted(staging.rglob("*"), reverse=True):  # the files' bytes first, then the folders' entries
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            fsync_directory(path)
    fsync_directory(staging)
    complete = _sibling(final, COMPLETE_PREFIX)
    _rename(staging, complete)
    try:
        _swap_in(complete, final)
    except BaseException:
        with contextlib.suppress(OSError):
            recover_directory(final)  # the old or the new folder back under `final` before the error goes on
        raise
    return final


def _swap_in(complete: Path, final: Path) -> None:
    """Put the complete folder ``complete`` under ``final``, then delete what ``final`` held."""
    old = None
    if final.exists():
        old = _sibling(final, REPLACED_PREFIX)
        _rename(final, old)
    _rename(complete, final)
    if old is not None:
        _delete(old, final)


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime_ns, default=None)


def recover_directory(final: str | Path) -> Path | None:
    """Finish a `replace_directory` of ``final`` that a kill interrupted; return what was restored, if anything.

    A complete new folder (``.complete-NAME.*``) takes the final name (the old one, if still there, goes); with
    none, and no ``final``, the old folder renamed aside (``.replaced-NAME.*``) comes back. Complete copies are
    restored, never deleted; only once ``final`` exists are the superseded ones removed. Call it only where no
    other process may be replacing ``final`` right now (a writer at its start, rank 0 of a resume).
    """
    final = Path(final)
    folder = final.parent
    if not folder.is_dir():
        return None
    complete = list(folder.glob(f"{COMPLETE_PREFIX}{final.name}.*"))
    replaced = list(folder.glob(f"{REPLACED_PREFIX}{final.name}.*"))
    restored = None
    try:
        if complete:
            restored = _newest(complete)
            complete.remove(restored)
            _swap_in(restored, final)
        elif replaced and not final.exists():
            restored = _newest(replaced)
            replaced.remove(restored)
            _rename(restored, final)
    except FileNotFoundError:
        return None  # another process recovered it meanwhile
    if final.exists():
        for superseded in complete + replaced:
            _delete(superseded, final)
    return restored


def recover_directories(directory: str | Path) -> list[Path]:
    """`recover_directory` for every folder of ``directory`` that an interrupted replace left aside."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = set()
    for prefix in (COMPLETE_PREFIX, REPLACED_PREFIX):
        for path in directory.glob(f"{prefix}*"):
            names.add(path.name[len(prefix) :].rsplit(".", 1)[0])
    return [r for r in (recover_directory(directory / n) for n in sorted(names)) if r is not None]


def remove_stale_temporaries(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete what interrupted atomic writes left in ``directory`` (files and folders named ``.tmp-*``; with
    ``name``, only the temporaries of that one file or folder: ``.tmp-NAME.*``), after finishing interrupted
    folder replacements there (`recover_directory`: complete copies are restored, never deleted)."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    if name is None:
        recover_directories(directory)
    else:
        recover_directory(directory / name)
    pattern = f"{TEMP_PREFIX}{name}.*" if name is not None else f"{TEMP_PREFIX}*"
    for leftover in directory.glob(pattern):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
