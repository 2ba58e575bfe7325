"""Every user-facing error of ``ouro`` under one base, `OuroError`, and how OS errors are worded.

`ouro.cli.main` catches `OuroError` and prints ``ouro: error: <message>``, then exits with the class's
``exit_code`` (``OURO_DEBUG=1`` shows the traceback). Input the user can fix exits 2; a fault of the machine (a
full disk) exits 1. Each class also keeps the standard base it had before (``ValueError``, ``RuntimeError``,
``FileNotFoundError``), so ``except ValueError`` around a library call still catches it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path
from typing import NoReturn

#: errno values that mean "the filesystem has no room" (full disk, quota exceeded, file too large).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OuroError(Exception):
    """Base of every error ``ouro`` reports to its user in one line: the message names the thing and the fix."""

    #: The exit status of the ``ouro`` command that ends with this error: 2 input to fix, 1 a machine fault.
    exit_code = 2


class ConfigError(OuroError, ValueError):
    """A configuration value is invalid; the message names the field and what to change."""


class RecipeError(OuroError, ValueError):
    """A recipe cannot be read: the message names the file and what to change."""


class DataError(OuroError, ValueError):
    """Bad input data or prepared shards; the message names the file (and line or row) and the fix."""


class PreparedOtherwiseError(DataError):
    """A prepare's output folder holds shards made from other inputs or settings (redone only when told to)."""


class SourceError(OuroError, ValueError):
    """A model source cannot be read; the message names the path and what to do."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A model source names nothing that exists, locally or as a Hub repo id."""


class StageInitError(OuroError, ValueError):
    """The stage cannot be initialised from its ``init_from``; the message says what to run or change."""


class ResumeError(OuroError, ValueError):
    """A run cannot resume: no readable checkpoint, a checkpoint ``weights_only`` refuses, or changed settings."""


class UntrustedCheckpointError(ResumeError):
    """``torch.load(weights_only=True)`` refuses the checkpoint: it holds objects that are not plain data."""


class RunInUseError(OuroError, ValueError):
    """Another live ``ouro fit`` holds the run directory (`ouro.run_lock`)."""


class PipelineError(OuroError, ValueError):
    """The pipeline file is invalid or a stage failed; the message names the stage."""


class ExportError(OuroError, ValueError):
    """The export cannot be written; the message names the argument to change."""


class PushError(OuroError, RuntimeError):
    """The upload failed; the message says why and how to retry. The local export is untouched."""


class PlanError(OuroError, ValueError):
    """``ouro plan`` (or the plan ``ouro fit`` makes before a GPU run) cannot plan what it was given; the message
    names the option and what to change."""


class WriteError(OuroError, RuntimeError):
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
    head, union, rest = text.partition("Does not validate against any of the Union subtypes")
    if union:
        lines = rest.splitlines()[1:]
        indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
        reasons, given = [], None
        in_errors = False
        for line in (line[indent:] for line in lines):
            if line.startswith("Errors:"):
                in_errors = True
            elif in_errors and line.startswith("  - "):
                reason = line[4:].strip()
                if not reason.startswith("Expected a <class 'NoneType'>"):
                    reasons.append(reason)
            elif in_errors and not line.startswith("    "):
                in_errors = False
            if line.startswith("Given value: "):
                given = line.removeprefix("Given value: ").strip()
        if reasons:
            where = " ".join(head.split())  # a command-line value: 'Parser key "num_workers":'
            got = f" (got {given})" if where and given else ""
            return f"{where} {'; '.join(reasons)}{got}".strip()
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


def usage_error(command: str, error: Exception) -> NoReturn:
    """End a command whose arguments do not parse: the error line first, then where the options are listed
    (instead of the parser's usage of up to a hundred lines, printed before the error)."""
    if os.environ.get("OURO_DEBUG"):
        raise error
    print(f"ouro: error: {plain_message(error)}", file=sys.stderr)
    print(f"run `ouro {command} --help` for the options", file=sys.stderr)
    raise SystemExit(2) from None
