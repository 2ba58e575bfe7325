"""Loader workers die with a training process that is killed (``kill -9``), at once and without a word.

A loader worker hands each batch's tensors to the training process over a connection of multiprocessing's
``resource_sharer``. When the training process dies during that handshake, a worker left alone prints the reset
connection as a traceback (under SLURM, into the job log) and lingers until PyTorch's watchdog notices, up to 5 s.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ouro.data import worker_server
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.data.workers import QuietIfParentDied

ROOT = Path(__file__).resolve().parent.parent
#: A killed training process's workers must be gone well before PyTorch's watchdog (5 s) would end them.
GONE_WITHIN_S = 3.0

# Iterates an ouro loader with two workers, prints the workers' pids, then dies by SIGKILL in the middle of the
# handshake that receives a batch's tensors: it has answered the worker's challenge and not yet read the
# worker's reply, so the worker's end of the connection is reset. (A batch that a worker sent ahead of its turn
# was received, handshake included, while the loader waited for an earlier one.)
KILLED_WHILE_RECEIVING = """
import multiprocessing, multiprocessing.connection as connection, os, signal, sys
from ouro.data.pretrain import PretrainDataModule

data = PretrainDataModule(sources=[sys.argv[1]], val_source=None, seq_len=16, batch_size=2, num_workers=2)
data.setup("fit")
batches = iter(data.train_dataloader())
next(batches)
print(" ".join(str(worker.pid) for worker in multiprocessing.active_children()), flush=True)
answer_challenge = connection.answer_challenge

def answer_then_die(conn, authkey):
    recv_bytes, received = conn.recv_bytes, []

    def recv_then_die(*args):
        received.append(args)
        if len(received) == 2:  # the worker's reply to our answer
            os.kill(os.getpid(), signal.SIGKILL)
        return recv_bytes(*args)

    conn.recv_bytes = recv_then_die
    answer_challenge(conn, authkey)

connection.answer_challenge = answer_then_die
for _ in range(20):  # a batch that arrived early was received already (no handshake); the next one is not
    next(batches)
print("not killed: 20 more batches needed no handshake with a worker", flush=True)
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader_workers")
    corpus = root / "corpus.jsonl"
    words = "alpha beta gamma delta loop model token stream shard chunk".split()
    docs = (" ".join(words[(i + j) % len(words)] for j in range(5 + i % 20)) for i in range(300))
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(train_tokenizer([corpus], vocab_size=100).to_str())
    prepare([str(corpus)], str(root / "shards"), tokenizer=str(tokenizer), num_workers=1)
    return root / "shards"


#: Run first, the scripts' workers are forked by the worker server, as under ``ouro fit``.
WITH_WORKER_SERVER = (
    "from ouro.data.worker_server import start_worker_server\nassert start_worker_server() is not None\n"
)
STARTS = pytest.mark.parametrize(
    "server",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(not worker_server.supported(), reason="Linux, Python < 3.14 only"),
        ),
    ],
    ids=["forked", "worker_server"],
)


def _start(script: str, shards: Path, server: bool = False, **popen) -> subprocess.Popen:
    """``python -c SCRIPT SHARDS`` with its output piped (text); with ``server``, the worker server first."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", (WITH_WORKER_SERVER if server else "") + script, str(shards)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting for its reaper has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel ends the workers on Linux only")
@STARTS
def test_workers_of_a_killed_training_process_die_at_once_and_print_nothing(
    shards: Path, server: bool
) -> None:
    child = _start(KILLED_WHILE_RECEIVING, shards, server)
    try:
        # The workers' pids, or nothing if the child hangs before printing them (then it is killed below).
        started = select.select([child.stdout], [], [], 120)[0]
        workers = [int(pid) for pid in child.stdout.readline().split()] if started else []
        returncode = child.wait(timeout=60) if workers else None
        died = time.monotonic()
        while any(map(_running, workers)) and time.monotonic() - died < GONE_WITHIN_S:
            time.sleep(0.05)
        alive = [pid for pid in workers if _running(pid)]
    finally:
        for pid in [child.pid, *workers]:  # never leave a process behind, whatever failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
    assert len(workers) == 2 and returncode == -signal.SIGKILL, stdout + stderr
    # "leaked semaphore": multiprocessing's resource tracker, cleaning up after the worker server's loaders.
    assert not alive and "Traceback" not in stderr and "leaked semaphore" not in stderr, (
        f"loader workers still running {GONE_WITHIN_S} s after the training process was killed: {alive}; "
        f"what the processes printed:\n{stderr}"
    )


def test_a_worker_reports_a_lost_connection_unless_its_parent_died() -> None:
    reported = []
    error = ConnectionResetError(104, "Connection reset by peer")
    alive = QuietIfParentDied(lambda *exc: reported.append(exc[1]), os.getppid(), wait_s=0.05)
    alive(ConnectionResetError, error, None)
    alive(ValueError, ValueError("any other error"), None)
    assert [type(e) for e in reported] == [ConnectionResetError, ValueError], "a live parent: all reported"
    reported.clear()
    dead = QuietIfParentDied(lambda *exc: reported.append(exc[1]), os.getppid() + 1_000_000, wait_s=0.05)
    dead(ConnectionResetError, error, None)
    dead(EOFError, EOFError(), None)
    dead(ValueError, ValueError("any other error"), None)
    assert [type(e) for e in reported] == [ValueError], "the parent is gone: its lost connection is no news"


# Fails while an ouro loader's iterator (two workers) still holds its workers: the process exits with them alive.
FAILS_WITH_WORKERS_RUNNING = """
import sys
from ouro.data.pretrain import PretrainDataModule

data = PretrainDataModule(sources=[sys.argv[1]], val_source=None, seq_len=16, batch_size=2, num_workers=2)
data.setup("fit")
batches = iter(data.train_dataloader())
next(batches)
raise RuntimeError("a failure while the loader's workers run")
"""


@STARTS
def test_a_process_that_fails_while_its_workers_run_exits_instead_of_waiting_for_them(
    shards: Path, server: bool
) -> None:
    # The workers ignore SIGTERM (it is the training process's), and Python's exit sends daemonic children
    # SIGTERM and then waits for them without a limit.
    child = _start(
        FAILS_WITH_WORKERS_RUNNING, shards, server, start_new_session=True
    )  # its workers can be killed too
    try:
        stdout, stderr = child.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        pytest.fail(f"the process was still running 90 s after it started; it printed:\n{stdout}{stderr}")
    assert child.returncode == 1, stdout + stderr
    assert stderr.rstrip().endswith("RuntimeError: a failure while the loader's workers run"), stderr
