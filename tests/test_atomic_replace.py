"""`ouro.atomic.replace_directory` killed at each of its renames: after the next start's recovery the final name
holds the old or the new folder, complete, every time.

Two ways to kill exactly there: a hook that SIGKILLs the process at its N-th ``os.replace`` (always available),
and strace's ``inject=rename:delay_exit`` (the real syscall, completed and then held open while the test kills
the process; needs strace, which the test installs with apt when it runs as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ouro import atomic
from ouro.atomic import remove_stale_temporaries

ROOT = Path(__file__).parent.parent
ATOMIC = str(Path(atomic.__file__))
OLD = {"a.bin": b"old a" * 100, "b.bin": b"old b", "sub/c.bin": b"old c"}
NEW = {"a.bin": b"new a" * 200, "d.bin": b"new d", "sub/c.bin": b"new c"}

#: The child: replace `final` by `staging`; with a hook count, SIGKILL itself at that os.replace (before it runs,
#: or with ``after`` once it ran).
CHILD = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[5])  # stdlib only: starts in milliseconds
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
staging, final, kill_at, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kill_at:
    original, calls = os.replace, [0]
    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        original(*args, **kwargs)
        if calls[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
atomic.replace_directory(staging, final)
print("renames", calls[0] if kill_at else "-")
"""


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _read(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    parent = tmp_path / "out"
    final, staging = parent / "export", parent / ".tmp-export.1234abcd"
    _write(final, OLD)
    _write(staging, NEW)
    return staging, final


def _env() -> dict[str, str]:
    # No .pyc writes: they are renames too, and would shift the count.
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def _child(staging: Path, final: Path, kill_at: int = 0, when: str = "before") -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", CHILD, str(staging), str(final), str(kill_at), when, ATOMIC]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)


def _assert_complete_after_recovery(final: Path, directory_wide: bool) -> str:
    if directory_wide:  # what a resume does to its checkpoints folder
        remove_stale_temporaries(final.parent)
    else:  # what an export (or prepare) of this one folder does at its start
        remove_stale_temporaries(final.parent, name=final.name)
    assert final.is_dir(), f"no {final.name} after recovery: {sorted(p.name for p in final.parent.iterdir())}"
    content = _read(final)
    assert content in (OLD, NEW), sorted(content)
    assert [p.name for p in final.parent.iterdir()] == [final.name], "nothing is left beside it"
    return "new" if content == NEW else "old"


def _renames(tmp_path: Path) -> int:
    staging, final = _setup(tmp_path / "count")
    done = _child(staging, final, kill_at=10_000)
    assert done.returncode == 0, done.stderr
    assert _read(final) == NEW
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("directory_wide", [False, True])
def test_killed_at_each_rename_the_final_folder_is_complete_after_recovery(tmp_path, directory_wide):
    renames = _renames(tmp_path)
    assert renames >= 2
    seen = []
    for kill_at in range(1, renames + 1):
        for when in ("before", "after"):
            case = tmp_path / f"{kill_at}-{when}"
            staging, final = _setup(case)
            killed = _child(staging, final, kill_at, when)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
            seen.append(_assert_complete_after_recovery(final, directory_wide))
    assert seen[-1] == "new", "killed after its last rename, the replace had happened"


def _strace() -> str:
    found = shutil.which("strace")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("strace is missing and installing it needs root")
    subprocess.run(["apt-get", "install", "-y", "-q", "strace"], capture_output=True, timeout=600)
    found = shutil.which("strace")
    if not found:
        pytest.skip("strace could not be installed with apt-get")
    return found


def test_killed_while_strace_holds_each_rename_the_final_folder_is_complete(tmp_path):
    strace = _strace()
    renames = _renames(tmp_path)
    for nth in range(1, renames + 1):
        case = tmp_path / f"strace-{nth}"
        staging, final = _setup(case)
        log = case / "strace.log"
        syscalls = "rename,renameat,renameat2"
        command = [
            strace, "-f", "-o", str(log), "-e", f"trace={syscalls}",
            "-e", f"inject={syscalls}:delay_exit=30000000:when={nth}",
            sys.executable, "-c", CHILD, str(staging), str(final), "0", "-", ATOMIC,
        ]  # fmt: skip
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            held = []
            while not held:
                if process.poll() is not None:
                    pytest.skip(f"strace cannot trace here: {process.stderr.read().decode()[-200:]}")
                assert time.monotonic() < deadline, "the rename was never held"
                lines = log.read_text().splitlines() if log.exists() else []
                held = [line for line in lines if "DELAYED" in line]
                time.sleep(0.05)
            assert str(case) in held[0], held[0]  # one of replace_directory's renames, done and held open
            os.kill(int(held[0].split()[0]), signal.SIGKILL)
        finally:
            process.kill()  # strace itself would sit out the rest of the delay
            process.wait(timeout=60)
        _assert_complete_after_recovery(final, directory_wide=False)


def test_a_resume_restores_a_sharded_checkpoint_caught_between_renames(tmp_path):
    """The checkpoints folder of a run killed while a sharded last.ckpt was swapped in: the resume finds it."""
    import torch

    from ouro.checkpoint_io import SHARDED_MARKER
    from ouro.resume import newest_readable_checkpoint

    folder = tmp_path / "checkpoints"
    for name, step in ((".replaced-last.ckpt.11111111", 2), (".complete-last.ckpt.22222222", 4)):
        (folder / name).mkdir(parents=True)
        torch.save({"global_step": step, "loops": {}}, folder / name / "meta.pt")
        (folder / name / SHARDED_MARKER).write_text("{}\n")
    found = newest_readable_checkpoint(tmp_path, move_aside=True)
    assert found.path == folder / "last.ckpt" and found.checkpoint["global_step"] == 4
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
