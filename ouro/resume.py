"""Which checkpoint a run directory resumes from, when its newest one may be damaged.

A run's checkpoints are ``checkpoints/last.ckpt`` and any numbered ``checkpoints/*.ckpt`` (files, or folders
for sharded FSDP checkpoints). `newest_readable_checkpoint` tries ``last.ckpt`` first (or a numbered checkpoint
saved after it at a later step), then the others newest first, and takes the first one that opens:
``torch.load(..., weights_only=True, mmap=True)`` reads a checkpoint's structure without reading its tensors,
so the check costs little even at scale. A sharded folder also needs its completion marker
(`ouro.checkpoint_io.SHARDED_MARKER`). Each damaged checkpoint is named in one line; when the run resumes into
the same folder it is moved aside (``last.ckpt.unreadable-<time>``), never deleted, because the resumed run
writes a new ``last.ckpt``; ``--ckpt_path`` still resumes from it. A checkpoint that ``weights_only`` refuses is
not damaged but untrusted: the run stops and says so instead of silently using an older one.

A run directory that has held a checkpoint (`held_checkpoints`: a moved-aside one, anything else left in
``checkpoints/``, a pre-emption ``hpc_ckpt_<n>.ckpt``) but has none to resume from never starts the stage again
unless ``--restart true`` says so: a retry loop or a requeued job that reruns the same command stops with one line
instead of training from step 0 over the old run.

`ResumeSettings` records the data settings a resume must keep (``seq_len``, ``batch_size``, ``num_workers``)
in every checkpoint; `check_resume_settings` refuses a resume that changed one of them, naming it.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningDataModule
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ouro.atomic import TEMP_PREFIX, remove_stale_temporaries
from ouro.checkpoint_io import SHARDED_MARKER, is_complete_sharded
from ouro.data.base import OuroDataModule
from ouro.errors import ResumeError, UntrustedCheckpointError

#: Lightning's metadata file inside a sharded checkpoint folder.
SHARDED_METADATA = "meta.pt"
#: Longest reason given for an unreadable checkpoint (the line naming it stays under 200 characters).
MAX_REASON = 48
#: Data settings the loader state depends on (litdata refuses or silently misplaces a resume that changes them).
RESUME_SETTINGS = OuroDataModule.RESUME_FIELDS
#: Of those, the ones no resume may change (a loader that restripes its position still needs the same blocks
#: and batches; ``num_workers`` and the world size may change then).
FIXED_SETTINGS = ("seq_len", "batch_size")


@dataclass
class Inspection:
    """What opening a checkpoint told: its metadata (tensors not read), or why it cannot be used."""

    path: Path
    checkpoint: dict[str, Any] | None = None
    problem: str | None = None
    detail: str | None = None
    """PyTorch's whole message, shown with ``OURO_DEBUG=1``."""


def _load_structure(path: Path, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except (RuntimeError, OSError) as error:
        if isinstance(error, RuntimeError) and "mmap" not in str(error):
            raise
        # A legacy (non-zip) file, or one mmap refuses (a truncated file: EINVAL): read it to say why.
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def short_reason(error: BaseException) -> str:
    """A few words on why ``torch.load`` failed (PyTorch's messages run to several hundred characters; the
    whole text is shown with ``OURO_DEBUG=1``)."""
    text = str(error).strip()
    if not text or isinstance(error, OSError):  # torch's zip reader seeks before the start of a cut file
        return f"cut short or not a checkpoint ({(error.strerror if isinstance(error, OSError) else None) or type(error).__name__})"
    unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if unpickler:
        return f"not a checkpoint: {unpickler.group(1).strip()[:MAX_REASON]}"
    first = text.splitlines()[0].split(". ")[0]
    if len(first) > MAX_REASON:
        first = first.rsplit(": ", 1)[-1]
    return first[:MAX_REASON]


def inspect_checkpoint(path: str | Path, trusted: bool = False, resuming: bool = False) -> Inspection:
    """Open ``path`` as a resumable Lightning checkpoint; raise `UntrustedCheckpointError` if ``weights_only``
    refuses it (``trusted``: the user passed ``--weights_only false``, so it is opened without that check;
    ``resuming``: ``ouro fit`` resumes, so its flags may be advised)."""
    path = Path(path)
    target = path
    if path.is_dir():
        if not is_complete_sharded(path):
            return Inspection(
                path,
                problem=f"sharded checkpoint folder without {SHARDED_MARKER}: its write did not finish (a "
                "complete folder written before ouro wrote that marker can be marked by creating the file)",
            )
        target = path / SHARDED_METADATA
        if not target.is_file():
            return Inspection(path, problem=f"sharded checkpoint folder without {SHARDED_METADATA}")
    try:
        checkpoint = _load_structure(target, weights_only=not trusted)
    except Exception as error:
        if "Weights only load failed" in str(error) and "Unsupported global" in str(error):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
            what = f"a pickled {found.group(1)}" if found else "pickled objects"
            advice = (
                "If you trust the file, rerun with --weights_only false; otherwise move it out of the folder to "
                "resume from the checkpoint before it"
                if resuming
                else "Move it out of the folder to use the checkpoint before it, or name a checkpoint you trust"
            )
            raise UntrustedCheckpointError(
                f"{path} was not loaded: torch.load(weights_only=True) refuses it (it holds {what}, not only "
                f"tensors and plain data). {advice}"
            ) from None
        detail = f"{type(error).__name__}: {str(error).strip()}"
        return Inspection(path, problem=short_reason(error), detail=detail)
    if not isinstance(checkpoint, dict) or (target == path and "state_dict" not in checkpoint):
        return Inspection(path, problem="not a Lightning checkpoint (no state_dict)")
    return Inspection(path, checkpoint=checkpoint)


def candidates(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints in the order they are tried: ``last.ckpt``, then the others newest first (numbered
    ones, and the ``hpc_ckpt_<n>.ckpt`` that Lightning's own pre-emption handler writes at the top of the run)."""
    folder = Path(run_dir) / "checkpoints"
    found = [folder / "last.ckpt"] if (folder / "last.ckpt").exists() else []
    return found + sorted(_others(run_dir), key=lambda p: p.stat().st_mtime, reverse=True)


def _others(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    numbered = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"] if folder.is_dir() else []
    return numbered + list(Path(run_dir).glob(HPC_CHECKPOINTS))


def _step(inspection: Inspection) -> int:
    return int((inspection.checkpoint or {}).get("global_step", -1))


def _later_numbered(last: Inspection, run_dir: str | Path) -> Inspection:
    """A numbered (or hpc) checkpoint saved after ``last.ckpt`` at a later step, else ``last``: a crash while
    writing ``last.ckpt`` leaves the previous one intact, and the numbered file of the same step written just
    before."""
    newest = last
    since = last.path.stat().st_mtime
    for path in _others(run_dir):
        if path.stat().st_mtime > since:
            inspection = inspect_checkpoint(path)
            if inspection.problem is None and _step(inspection) > _step(newest):
                newest = inspection
    return newest


#: Inserted into the name of a checkpoint moved aside as unreadable: ``last.ckpt.unreadable-<time>``.
ASIDE_MARK = ".unreadable-"
#: Lightning's pre-emption checkpoints, written into the run directory itself.
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}{ASIDE_MARK}{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(aside)
    return aside


#: Unreadable checkpoints already named in this process (a source may be looked up more than once).
_reported: set[Path] = set()


def _say(line: str) -> None:
    print(f"ouro: {line}", file=sys.stderr, flush=True)


def newest_readable_checkpoint(
    run_dir: str | Path,
    move_aside: bool = False,
    quiet: bool = False,
    trusted: bool = False,
    resuming: bool = False,
) -> Inspection | None:
    """The checkpoint ``run_dir`` resumes from (see the module docstring); None if it has none.

    Args:
        run_dir: The run directory (its ``checkpoints/`` folder is searched).
        move_aside: Rename each unreadable checkpoint to ``<name>.unreadable-<time>`` (the run will write a new
            ``last.ckpt`` into this folder) and remove temporary files left by interrupted writes.
        quiet: Do not print the line about each unreadable checkpoint.
        trusted: Open checkpoints without ``weights_only`` (the user passed ``--weights_only false``).
        resuming: ``ouro fit`` resumes the run: its messages may advise ``ouro fit``'s flags (other commands read
            run directories too, and have none of them).

    Raises:
        ResumeError: checkpoints exist but none is readable (the message names each and why).
        UntrustedCheckpointError: the newest readable candidate is one ``weights_only`` refuses.
    """
    if move_aside:
        remove_stale_temporaries(Path(run_dir) / "checkpoints")
    tried: list[Inspection] = []
    for path in candidates(run_dir):
        inspection = inspect_checkpoint(path, trusted, resuming)
        if inspection.problem is None:
            last = path == Path(run_dir) / "checkpoints" / "last.ckpt"
            return _later_numbered(inspection, run_dir) if last else inspection
        tried.append(inspection)
        where = ""
        if move_aside:
            where = f"; moved it to {_move_aside(path).name}"
        if not quiet and (where or path not in _reported):
            _say(f"checkpoint {path} is unreadable ({inspection.problem}){where}")
            if os.environ.get("OURO_DEBUG") and inspection.detail:
                print(inspection.detail, file=sys.stderr, flush=True)
        _reported.add(path)
    if tried:
        if len(tried) == 1:
            names = f"{tried[0].path.name} ({tried[0].problem})"
        else:  # each one's reason is on its own line above
            names = ", ".join(i.path.name for i in tried[:4])
            names += f" and {len(tried) - 4} more" if len(tried) > 4 else ""
        advice = (
            "Pass --ckpt_path with a good checkpoint, or --restart true to start the stage again"
            if resuming
            else "Rerun its stage with `ouro fit` to write a good one, or name a good checkpoint file"
        )
        raise ResumeError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}: {names}. {advice}")
    return None


def held_checkpoints(run_dir: str | Path) -> list[Path]:
    """What shows that ``run_dir`` has held a checkpoint: every entry of its ``checkpoints/`` folder but the
    leftovers of interrupted writes (``.tmp-*``; Lightning creates the folder only when it saves), and
    pre-emption checkpoints (`HPC_CHECKPOINTS`, moved aside or not) in the run directory itself."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    found = [p for p in folder.iterdir() if not p.name.startswith(TEMP_PREFIX)] if folder.is_dir() else []
    found += run_dir.glob(HPC_CHECKPOINTS + "*") if run_dir.is_dir() else []
    return sorted(found)


def refuse_silent_restart(run_dir: str | Path) -> None:
    """Raise `ResumeError` when ``run_dir`` has held a checkpoint (`held_checkpoints`) although none is left to
    resume from: starting the stage again needs ``--restart true``."""
    run_dir = Path(run_dir)
    held = held_checkpoints(run_dir)
    if not held:
        return
    aside = [p for p in held if ASIDE_MARK in p.name]
    shown = [str(p.relative_to(run_dir)) for p in aside or held]
    what = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    kind = "moved aside as unreadable" if aside else "left, none of them a checkpoint to resume from"
    raise ResumeError(
        f"{run_dir} has held checkpoints but none is left to resume from ({what} {kind}): pass --ckpt_path "
        "with one (and --weights_only false if you trust the file), or --restart true to start the stage again"
    )


# --------------------------------------------------------------------------------------- settings of a resume
def data_settings(datamodule: LightningDataModule | None) -> dict[str, int]:
    """The values of `RESUME_SETTINGS` an ouro DataModule declares (none for another DataModule)."""
    return datamodule.resume_settings() if isinstance(datamodule, OuroDataModule) else {}


def run_settings(datamodule: Any, world_size: int) -> dict[str, int]:
    """What `ResumeSettings` records: the data settings plus the number of ranks (``world_size``)."""
    return {**data_settings(datamodule), "world_size": int(world_size)}


def restripes(datamodule: Any) -> bool | None:
    """Whether the data module's loader continues its position on another world size or ``num_workers``
    (`OuroDataModule.elastic_resume`: True for one litdata source; False for a mixture); None when it does not
    say."""
    return datamodule.elastic_resume if isinstance(datamodule, OuroDataModule) else None


class ResumeSettings(Callback):
    """Keeps the recipe's data settings (`RESUME_SETTINGS`) and the world size in every checkpoint, so that
    `check_resume_settings` can tell a resume that changed one of them.

    On a resume with another world size it also restates the epoch's progress in batches of the new world
    (Lightning counts batches per rank: 4 batches on 2 ranks are 8 on 1), so the epoch ends where the data
    does, not early or late.
    """

    def __init__(self, settings: dict[str, int]) -> None:
        """
        Args:
            settings: The run's values (``run_settings(datamodule, world_size)`` before training starts).
        """
        self.settings = dict(settings)

    @property
    def state_key(self) -> str:
        return "OuroResumeSettings"

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the recipe's values win, and `check_resume_settings` ran before fit."""

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        recorded = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        before, now = recorded.get("world_size"), self.settings.get("world_size")
        if not before or not now or before == now:
            return
        progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress and "current" in progress:
            current = progress["current"]
            for key, value in current.items():
                current[key] = int(value) * int(before) // int(now)


def _ranks(count: int) -> str:
    return f"{count} rank" if count == 1 else f"{count} ranks"


def _rows_taken(checkpoint: dict[str, Any]) -> int | None:
    """Rows of the epoch the checkpoint's training loader had handed out over all ranks (litdata's loader
    state), if it records them."""
    loops = (checkpoint.get("loops") or {}).get("fit_loop", {})
    states = (loops.get("state_dict") or {}).get("combined_loader") or []
    dataset = states[0].get("dataset") if states and isinstance(states[0], dict) else None
    if not isinstance(dataset, dict) or "num_samples_yielded" not in dataset:
        return None
    if "sample_in_epoch" in dataset:
        return int(dataset["sample_in_epoch"])
    return int(dataset["num_samples_yielded"]) * int(dataset.get("world_size", 1))


def check_resume_settings(
    checkpoint: dict[str, Any],
    current: dict[str, int],
    path: Path,
    run_dir: Path,
    elastic: bool | None = None,
) -> str | None:
    """Refuse to resume ``checkpoint`` with data settings other than the ones it was trained with, except the
    world size and ``num_workers`` where the loader restripes its position (``elastic``, see `restripes`).

    Returns the line that says what changed (None when nothing did)."""
    recorded = (checkpoint.get("callbacks") or {}).get("OuroResumeSettings")
    if not recorded:
        return None  # written before settings were recorded
    fixed = RESUME_SETTINGS if not elastic else FIXED_SETTINGS
    changed = [
        f"data.{name} is {current[name]} but {path.name} was trained with {recorded[name]}"
        for name in fixed
        if name in current and name in recorded and current[name] != recorded[name]
    ]
    world_before, world_now = recorded.get("world_size"), current.get("world_size")
    world_changed = bool(world_before and world_now and world_before != world_now)
    if world_changed and elastic is False:
        changed.append(
            f"it was written by {world_before} ranks and this run has {world_now} (a data mixture continues "
            "its position only on the same world size, num_workers and batch_size)"
        )
    if changed:
        raise ResumeError(
            f"cannot resume {run_dir}: {'; '.join(changed)}. The data-loader position only resumes with the "
            "same values: keep the old value(s), or start a new stage in another run directory with "
            f"--model.init_from {run_dir}"
        )
    what = []
    if world_changed:
        what.append(f"checkpoint written by {_ranks(world_before)}, resuming on {world_now}")
    workers_before, workers_now = recorded.get("num_workers"), current.get("num_workers")
    if workers_before is not None and workers_now is not None and workers_before != workers_now:
        what.append(f"data.num_workers {workers_before} -> {workers_now}")
    if not what:
        return None
    line = ", ".join(what)
    if elastic:
        line += ": data position restriped"
        taken, batch = _rows_taken(checkpoint), current.get("batch_size")
        if taken is not None and batch and world_now:
            stride = batch * world_now
            if taken % stride:
                line += (
                    f"; the loader restarts at row {taken - taken % stride} of the epoch (a multiple of the new "
                    f"global batch, {stride} rows), so the {taken % stride} rows after it are seen again"
                )
    return line


def resume_checkpoint(
    run_dir: str | Path,
    ckpt_path: str | None,
    datamodule: Any,
    trusted: bool = False,
    restart: bool = False,
    world_size: int = 1,
) -> str | None:
    """The checkpoint ``ouro fit`` resumes from: ``--ckpt_path`` if given, else the run directory's newest
    readable checkpoint (rank 0 moves unreadable ones aside); None starts the stage. Refuses a checkpoint
    ``weights_only`` rejects, a resume with changed data settings, and a start from step 0 in a run directory that
    has held a checkpoint (`refuse_silent_restart`) unless ``restart``. ``restart`` never discards a readable
    checkpoint: a requeued job whose command says ``--restart true`` resumes like any other. Rank 0 says in one
    line what changed (world size, ``num_workers``) when the loader restripes its position."""

    rank_zero = rank_zero_only.rank == 0
    run_dir = Path(run_dir)
    if ckpt_path is None:
        try:
            found = newest_readable_checkpoint(
                run_dir, move_aside=rank_zero, quiet=not rank_zero, trusted=trusted, resuming=True
            )
        except UntrustedCheckpointError:
            raise
        except ResumeError:
            if not restart:
                raise
            found = None  # every checkpoint was unreadable, and is now moved aside
        if found is None:
            if not restart:
                refuse_silent_restart(run_dir)
            elif rank_zero and held_checkpoints(run_dir):
                _say(f"--restart true: starting the stage {run_dir} again from step 0")
            return None
        if rank_zero:
            restarted = " (--restart true leaves a readable checkpoint in use)" if restart else ""
            _say(f"resuming {run_dir} from {found.path}{restarted}")
    elif Path(ckpt_path).exists():
        found = inspect_checkpoint(ckpt_path, trusted, resuming=True)
        if found.problem is not None:
            raise ResumeError(f"--ckpt_path {ckpt_path} is unreadable ({found.problem})")
    else:
        return ckpt_path  # "last", "hpc", a remote URL: Lightning resolves it
    current = run_settings(datamodule, world_size)
    change = check_resume_settings(found.checkpoint, current, found.path, run_dir, restripes(datamodule))
    if change and rank_zero:
        _say(change)
    return str(found.path)
