"""Where an unfinished prepare keeps its work, local or on object storage, and how it is published.

A prepare writes the chunks of each *unit* (see `ouro.data.shards`), then that unit's record (chunk list and
counts): a unit with a record is done, so a rerun after a crash, or another node, continues with the rest.
The merge writes ``index.json`` and ``tokenizer.json``, then ``manifest.json`` last:

* local output: everything lives in the hidden sibling ``.NAME.incomplete``, renamed to ``NAME`` after the
  manifest is in (an older ``NAME`` is replaced only then);
* object storage (no rename there): chunks and records are uploaded under the URL itself, and the folder counts
  as finished once ``manifest.json`` exists; a redo deletes the old manifest before anything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ouro.atomic import (
    atomic_write_text,
    fsync_directory,
    recover_directory,
    remove_stale_temporaries,
    replace_directory,
)
from ouro.data import remote
from ouro.data.manifest import MANIFEST
from ouro.errors import DataError

WORK = ".ouro-prepare"
PLAN = f"{WORK}/plan.json"


def unit_record_name(unit: int) -> str:
    return f"{WORK}/units/{unit:06d}.json"


class LocalStaging:
    """A local output folder and its hidden staging sibling."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.folder = output.parent / f".{output.name}.incomplete"
        self.chunk_dir = self.folder

    def finished_manifest(self) -> str | None:
        recover_directory(self.output)  # a prepare interrupted while it swapped the old output for the new
        path = self.output / MANIFEST
        return path.read_text() if path.is_file() else None

    def check_replaceable(self) -> None:
        """Refuse to replace a folder that no prepare wrote (the user's own files)."""
        if not self.output.exists() or (self.output / MANIFEST).is_file():
            return
        if self.output.is_dir() and not any(self.output.iterdir()):
            self.output.rmdir()
            return
        raise DataError(
            f"{self.output} exists and was not written by `ouro prepare` (no {MANIFEST}); it is left as it is, "
            "even with --overwrite true: choose another output_dir or remove it yourself"
        )

    def plan(self) -> str | None:
        path = self.folder / PLAN
        return path.read_text() if path.is_file() else None

    def start(self, plan: str, exclusive: bool) -> None:
        """Keep the work of an interrupted prepare with the same plan; otherwise start afresh."""
        old = self.plan()
        if old is not None and old != plan:
            if not exclusive:
                raise DataError(
                    f"{self.folder} holds the unfinished work of a prepare with other inputs or settings; "
                    "remove it before starting a prepare across nodes"
                )
            shutil.rmtree(self.folder)
        elif old is None and self.folder.exists() and exclusive:
            shutil.rmtree(self.folder)
        (self.folder / WORK / "units").mkdir(parents=True, exist_ok=True)
        if exclusive:  # (another node may be writing: its temporaries and merge lock are live)
            remove_stale_temporaries(self.folder)  # what a write cut short by a kill left behind
            shutil.rmtree(self.folder / WORK / "merge.lock", ignore_errors=True)
        if old != plan:
            atomic_write_text(self.folder / PLAN, plan)

    def publish_chunk(self, name: str) -> None:
        """Chunks are written in place (atomically)."""

    def has_chunk(self, chunk: dict) -> bool:
        path = self.folder / chunk["filename"]
        return path.is_file() and path.stat().st_size == chunk["chunk_bytes"]

    def write_record(self, name: str, text: str) -> None:
        atomic_write_text(self.folder / name, text)

    def records(self) -> dict[str, str]:
        units = self.folder / WORK / "units"
        files = sorted(units.glob("*.json")) if units.is_dir() else []
        return {f"{WORK}/units/{f.name}": f.read_text() for f in files}

    def try_lock_merge(self) -> bool:
        """Only one node merges: the one that creates the lock folder (atomic on POSIX filesystems)."""
        try:
            (self.folder / WORK / "merge.lock").mkdir()
            return True
        except FileExistsError:
            return False

    def finish(self, index: str, tokenizer_file: Path, manifest: str) -> None:
        remove_stale_temporaries(self.folder)  # every unit is done: no write is live
        atomic_write_text(self.folder / "index.json", index)
        atomic_write_text(self.folder / "tokenizer.json", Path(tokenizer_file).read_text())
        atomic_write_text(self.folder / MANIFEST, manifest)
        shutil.rmtree(self.folder / WORK)  # after the manifest: a rerun after a kill here only merges again
        fsync_directory(self.folder)
        replace_directory(self.folder, self.output)

    def describe(self) -> str:
        return str(self.folder)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class RemoteStaging:
    """An object-storage prefix written in place; ``scratch`` is the local folder chunks pass through."""

    def __init__(self, url: str, scratch: Path) -> None:
        if not remote.litdata_url(url).startswith(remote.WRITABLE_SCHEMES):
            remote._provider(url)  # raises the one-line error for a scheme litdata cannot write
        self.output = url
        self.scratch = scratch
        self.chunk_dir = scratch / "chunks"

    def finished_manifest(self) -> str | None:
        return remote.read_text(self.output, MANIFEST, self.scratch)

    def check_replaceable(self) -> None:
        names = remote.list_names(self.output)
        ours = any(n == MANIFEST or n.startswith(WORK + "/") for n in names)
        if names and not ours:
            raise DataError(
                f"{self.output} holds objects that `ouro prepare` did not write (no {MANIFEST}); they are left as "
                "they are, even with --overwrite true: choose another URL or remove them yourself"
            )

    def plan(self) -> str | None:
        return remote.read_text(self.output, PLAN, self.scratch)

    def start(self, plan: str, exclusive: bool) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        old = self.plan()
        if old == plan:
            return
        if old is not None and not exclusive:
            raise DataError(
                f"{self.output} holds the unfinished work of a prepare with other inputs or settings; remove it "
                "before starting a prepare across nodes"
            )
        if exclusive:
            remote.delete(self.output, MANIFEST)  # first: from here on the prefix is unfinished
            remote.delete(self.output, "")
        self._put(PLAN, plan)

    def _put(self, name: str, text: str) -> None:
        local = self.scratch / name.replace("/", "_")
        atomic_write_text(local, text)
        remote.upload(local, self.output, name)
        local.unlink()

    def publish_chunk(self, name: str) -> None:
        remote.upload(self.chunk_dir / name, self.output, name)
        (self.chunk_dir / name).unlink()

    def has_chunk(self, chunk: dict) -> bool:
        return True  # a record is uploaded only after all its chunks

    def write_record(self, name: str, text: str) -> None:
        self._put(name, text)

    def records(self) -> dict[str, str]:
        names = [n for n in remote.list_names(self.output, f"{WORK}/units/") if n.endswith(".json")]
        return {n: remote.read_text(self.output, n, self.scratch) or "" for n in names}

    def try_lock_merge(self) -> bool:
        return True  # the merge writes the same bytes whoever runs it; object PUTs are atomic

    def finish(self, index: str, tokenizer_file: Path, manifest: str) -> None:
        self._put("index.json", index)
        remote.upload(Path(tokenizer_file), self.output, "tokenizer.json")
        remote.delete(self.output, WORK + "/")
        self._put(MANIFEST, manifest)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def describe(self) -> str:
        return self.output

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
