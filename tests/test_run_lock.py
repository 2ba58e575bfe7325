"""One run directory, one job (`ouro.run_lock`): a second ``ouro fit`` on a run in use refuses with one line naming
the holder's host and PID; a lock left by a dead job is taken over with one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import fit_args, fit_in_process, write_recipe

from ouro.cli import main
from ouro.errors import RunInUseError
from ouro.run_lock import LOCK_NAME, Holder, RunLock, holder_is_gone

ROOT = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys, time; from ouro.run_lock import RunLock; "
    "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"
)


def _hold_in_another_process(run: Path) -> subprocess.Popen:
    """Another process takes the lock on ``run`` (exactly as ``ouro fit`` does) and keeps it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_fit_refuses_then_takes_over_the_lock_of_a_dead_job(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    holder = _hold_in_another_process(run)
    try:
        with pytest.raises(SystemExit) as exited:
            main(fit_args(write_recipe(tmp_path, 2), run))
        assert exited.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"ouro: error: {run} is in use by another `ouro fit` (host ")
        assert f"host {socket.gethostname()}, PID {holder.pid}, since " in lines[0]
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME], "a refused fit writes nothing"
    finally:
        holder.kill()  # SIGKILL: the lock stays behind, as after kill -9 or a lost node
        holder.wait()
    left = json.loads((run / LOCK_NAME).read_text())
    assert left["pid"] == holder.pid

    fit_in_process(*fit_args(write_recipe(tmp_path, 2), run))
    taken = [line for line in capsys.readouterr().err.splitlines() if "took over the lock" in line]
    assert taken == [
        f"ouro: took over the lock of {run} left by a job that is gone (host {socket.gethostname()}, "
        f"PID {holder.pid}, since {left['started']})"
    ]
    assert (run / "checkpoints" / "last.ckpt").is_file(), "it trained"
    assert not (run / LOCK_NAME).exists(), "released at the end of the fit"


def _holder(**changes) -> Holder:
    return Holder(**{**vars(Holder.this_process()), **changes})


def test_which_holders_count_as_gone(tmp_path) -> None:
    me = Holder.this_process()
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert holder_is_gone(_holder(pid=dead.pid), me), "this host, the PID is gone"
    assert not holder_is_gone(_holder(), me), "this very process"
    assert holder_is_gone(_holder(process_start="1"), me), "this host, the PID now belongs to another process"
    other_host = _holder(host="node-elsewhere", slurm_job="77")
    assert holder_is_gone(other_host, _holder(slurm_job="77")), "an earlier run of this requeued job"
    assert not holder_is_gone(_holder(host="node-elsewhere", slurm_job=None), me), "cannot tell: alive"


def test_a_lock_on_another_host_names_the_file_to_delete(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    record = {"host": "node-elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunInUseError) as refused:
        RunLock(run).acquire()
    assert str(refused.value) == (
        f"{run} is in use by another `ouro fit` (host node-elsewhere, PID 4242, since 2026-01-01T00:00:00); wait "
        f"for it to end or use another --trainer.default_root_dir (if that process is gone, delete {run / LOCK_NAME})"
    )
    lock = RunLock(tmp_path / "mine")
    lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()
