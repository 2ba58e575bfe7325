"""A training process forks its loader workers, so it must not run other threads when it does: a child forked
beside a running thread inherits whatever lock that thread held at that instant, and can wait on it for ever
(a hang of the whole job, silent, since the worker still looks alive). What ``ouro fit`` imports must start no
thread; pyarrow did (its allocator's background thread starts when the library loads) until ouro imported it
only where it reads parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ouro.data import worker_server

ROOT = Path(__file__).resolve().parent.parent
NEEDS_SERVER = pytest.mark.skipif(
    not worker_server.supported(), reason="the worker server runs on Linux, Python < 3.14"
)


def _python(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` with ouro and the tests' helpers importable, one OpenMP thread; its output captured."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# Parses every tiny stage recipe as ``ouro fit`` does (classes resolved, so every module a stage names is
# imported), then prints the names of the process's threads, as the kernel knows them.
PARSE_THEN_LIST_THREADS = """
import contextlib, io, json, os, sys
from ouro.cli import main

for recipe in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["fit", "--config", recipe, "--print_config"])
        except SystemExit as stop:
            assert not stop.code, (recipe, stop.code)
tasks = sorted(os.listdir("/proc/self/task"))
print(json.dumps([open(f"/proc/self/task/{task}/comm").read().strip() for task in tasks]))
"""


def test_ouro_fit_starts_no_thread_before_it_forks_loader_workers() -> None:
    recipes = sorted(str(path) for path in (ROOT / "recipes" / "tiny").glob("*.yaml"))
    assert len(recipes) >= 7  # every stage and the gate training
    result = _python("-c", PARSE_THEN_LIST_THREADS, *recipes, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    threads = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(threads) == 1, f"threads besides the main one: {threads}"


# Starts a loader with one worker while another thread holds a lock that a forked child needs (what any running
# thread may hold at the instant of a fork: here made certain, through an after-fork handler that takes it).
# With the worker server started first (argv[1] == "server") the worker is forked by the server, which was forked
# before the thread and the handler existed; otherwise by this process itself.
WORKER_BESIDE_A_HELD_LOCK = """
import os, sys, threading, time
import torch
from ouro.data.worker_server import start_worker_server, worker_context

if sys.argv[1] == "server":
    assert start_worker_server() is not None
held = threading.Lock()
threading.Thread(target=lambda: (held.acquire(), time.sleep(3600)), daemon=True).start()
while not held.locked():
    time.sleep(0.01)
os.register_at_fork(after_in_child=held.acquire)
loader = torch.utils.data.DataLoader(
    list(range(8)), batch_size=2, num_workers=1, multiprocessing_context=worker_context(), timeout=10
)
print(sum(int(batch.sum()) for batch in loader))
"""


@NEEDS_SERVER
@pytest.mark.parametrize("start", ["fork", "server"])
def test_a_worker_forked_beside_a_held_lock_hangs_unless_the_worker_server_forks_it(start: str) -> None:
    result = _python("-c", WORKER_BESIDE_A_HELD_LOCK, start)
    if start == "fork":  # the reference: the worker never starts, and the loader's timeout says so
        assert result.returncode != 0 and "DataLoader timed out after 10 seconds" in result.stderr, (
            result.stderr
        )
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split() == [str(sum(range(8)))]


RECIPE = """\
seed_everything: 3
trainer:
  accelerator: cpu
  max_steps: 2
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
  num_sanity_val_steps: 0
  logger: false
model:
  model: {vocab_size: 4096, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
          num_key_value_heads: 2, max_position_embeddings: 32, total_ut_steps: 2, eos_token_id: 0}
data:
  class_path: ouro.data.PretrainDataModule
  init_args: {sources: builtin, val_source: null, seq_len: 16, batch_size: 2, num_workers: 2}
"""


@NEEDS_SERVER
def test_ouro_fit_has_its_loader_workers_forked_by_a_one_thread_server(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    record = tmp_path / "workers.json"
    command = [
        "-m", "ouro.cli", "fit", "--config", "recipe.yaml", "--trainer.default_root_dir", "run",
        "--trainer.callbacks+=worker_parents.RecordWorkerParents", f"--trainer.callbacks.path={record}",
    ]  # fmt: skip
    result = _python(*command, cwd=tmp_path, timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    seen = json.loads(record.read_text())
    assert len(seen["worker_parents"]) == 2
    (server,) = set(seen["worker_parents"])
    assert server != seen["training_process"], "the training process forked its workers itself"
    assert seen["worker_parent_threads"] == [1, 1]


FORKED_AFTER_THE_SERVER = """
import os
from ouro.data.worker_server import start_worker_server, worker_context

assert start_worker_server() is not None
child = os.fork()
if child == 0:
    os._exit(0 if worker_context() is None else 3)
_, status = os.waitpid(child, 0)
print(worker_context() is not None, os.waitstatus_to_exitcode(status))
"""


@NEEDS_SERVER
def test_a_process_forked_after_the_server_started_does_not_use_its_parents_server() -> None:
    # A rank forked from the process that started the server (``ddp_fork``) is not the server's parent: its
    # loaders keep the default start method.
    result = _python("-c", FORKED_AFTER_THE_SERVER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "0"]
