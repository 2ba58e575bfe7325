"""Errors that end an ``ouro`` command with one line instead of a traceback, and how OS errors are worded.

`ouro.cli.main` prints ``ouro: error: <message>`` for these and exits with their ``exit_code`` (``OURO_DEBUG=1``
shows the traceback). Input the user can fix exits 2; a fault of the machine (a full disk) exits 1.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

#: errno values that mean "the filesystem has no room" (full disk, quota exceeded, file too large).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ResumeError(ValueError):
    """A run cannot resume: no readable checkpoint, a checkpoint ``weights_only`` refuses, or changed settings."""

    exit_code = 2


class WriteError(RuntimeError):
    """Writing a file a later run trusts (checkpoint, export) failed; the message says what is still intact."""

    exit_code = 1

    def __init__(self, message: str, errno_value: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_value


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def free_bytes(directory: str | Path) -> int | None:
    """Free space of the filesystem holding ``directory`` (its nearest existing parent), if it can be read."""
    directory = Path(directory).absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def describe_write_failure(
    what: str, path: str | Path, error: OSError, needed: int | None, intact: str
) -> str:
    """One line for a failed write: what, where, why, the space needed when known, and what is still intact."""
    reason = error.strerror or str(error)
    line = f"could not write {what} {path}: {reason}"
    if error.errno in NO_SPACE:
        free = free_bytes(Path(path).parent)
        details = [f"needs about {human_bytes(needed)}" if needed else None]
        details.append(f"{human_bytes(free)} free" if free is not None else None)
        details = [d for d in details if d]
        if details:
            line += f" ({', '.join(details)})"
    return f"{line}; {intact}"


def plain_message(error: BaseException) -> str:
    """The message of ``error`` as one line for the user.

    jsonargparse reports a bad value inside a ``class_path`` block (``data: {class_path: ..., init_args: ...}``)
    as "Does not validate against any of the Union subtypes" followed by each subtype's error and the whole
    value; only the class's own error says what is wrong, so that one is kept.
    """
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        where = f" writing {error.filename}" if error.filename else ""
        return (
            f"{error.strerror or 'no space left'}{where}; what ouro writes atomically (checkpoints, exports, "
            "stage markers) is intact: free space and rerun to resume"
        )
    text = str(error).strip()
    if text.startswith("Does not validate against any of the Union subtypes"):
        reasons = []
        in_errors = False
        for line in text.splitlines():
            if line.startswith("Errors:"):
                in_errors = True
            elif in_errors and line.startswith("  - "):
                reason = line[4:].strip()
                if not reason.startswith("Expected a <class 'NoneType'>"):
                    reasons.append(reason)
            elif in_errors and not line.startswith("    "):
                in_errors = False
        if reasons:
            return "; ".join(reasons)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def os_error_behind(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``, if any: torch's zip writer turns a failed ``write`` (a full disk) into a
    ``RuntimeError`` raised while it handles the ``OSError``, and safetensors reports one in its message
    (``No space left on device (os error 28)``)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        found = re.search(r"Os \{ code: (\d+)|\(os error (\d+)\)", str(current))
        if found:
            code = int(found.group(1) or found.group(2))
            return OSError(code, os.strerror(code))
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
