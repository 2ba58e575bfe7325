"""`ouro fit` under a real one-node SLURM (Debian's slurm-wlm, see ``slurm_cluster``), submitted through the
shipped ``scripts/slurm/ouro_fit.sbatch`` set for a CPU node by ``sbatch`` flags alone.

* Pre-emption: three ``scancel --signal=USR1`` warnings in a row (what ``--signal=SIGUSR1@N`` sends); each one is
  a checkpoint at a step boundary, a requeue and a resume, and the stage ends bit-identical (weights, AdamW
  state, step, tokens, data position) to the same stage run without SLURM on 2 processes (torchrun), with no
  traceback from any process, loader workers included.
* A rank killed with SIGKILL, then ``scancel``: each job ends with one line that names what a rerun resumes from,
  never a hang; the reruns resume from the newest complete checkpoint and end where the uninterrupted run ends.

The jobs train a tiny model on the built-in corpus (``num_workers: 1``, so loader workers receive the signals),
paced by ``slurm_helpers.Pace`` so that a signal lands while they train.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from slurm_cluster import ClusterUnavailable, SlurmCluster, start_cluster
from slurm_helpers import DUMP_STACKS
from worker_parents import parent_pid

TESTS = Path(__file__).resolve().parent
# Its jobs run under time limits and pre-emption warnings timed in seconds: no other test runs beside them.
pytestmark = pytest.mark.exclusive
ROOT = TESTS.parent
SBATCH = ROOT / "scripts" / "slurm" / "ouro_fit.sbatch"
CPU_NODE = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
MAX_STEPS = 24
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
EVERY = 2  # numbered checkpoints every EVERY steps: the tests watch them to know a job is training

RECIPE = f"""\
seed_everything: 5
cpu_threads: 1
checkpoint_every_n_steps: {EVERY}
trainer:
  accelerator: cpu
  strategy: ddp
  max_steps: {MAX_STEPS}
  enable_progress_bar: false
  enable_model_summary: false
  val_check_interval: 1000
  check_val_every_n_epoch: null
  limit_val_batches: 0
  num_sanity_val_steps: 0
  logger: false
model:
  model:
    vocab_size: 4096
    hidden_size: 64
    intermediate_size: 172
    num_hidden_layers: 2
    num_attention_heads: 4
    num_key_value_heads: 4
    max_position_embeddings: 64
    total_ut_steps: 2
    eos_token_id: 0
  entropy_coef: 0.05
data:
  class_path: ouro.data.PretrainDataModule
  init_args:
    sources: builtin
    val_source: null
    seq_len: 32
    batch_size: 2
    num_workers: 1
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running one-node SLURM (installed with apt-get when missing, as root); skipped with the reason."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as reason:
        pytest.skip(str(reason))
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(cluster: SlurmCluster):
    """The cluster, with every job a test left behind (a failed assertion mid-job) cancelled after it."""
    yield cluster
    cluster.cancel_all()


def _job_env(cluster: SlurmCluster | None) -> dict[str, str]:
    """The environment of ``ouro`` runs: this Python's ``ouro`` first on PATH, the tests importable."""
    env = {k: v for k, v in (cluster.env if cluster else os.environ).items() if not k.startswith("SLURM_")}
    if cluster is not None:
        env["SLURM_CONF"] = str(cluster.conf)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slurm_runs")
    (folder / "recipe.yaml").write_text(RECIPE)
    (folder / "logs").mkdir()  # the script writes logs/%x-%j.out, and SLURM does not create the folder
    return folder


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> dict:
    """The stage on 2 processes without SLURM (torchrun), never interrupted: its final checkpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = workdir / "torchrun"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
        "-m", "ouro.cli", "fit", "--config", "recipe.yaml", "--trainer.devices", "2",
        "--trainer.default_root_dir", str(run),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=workdir, env=_job_env(None), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------- jobs
def _submit(cluster: SlurmCluster, workdir: Path, run: Path) -> int:
    """``sbatch`` the shipped script, set for this CPU node by flags alone, on the recipe; the job id."""
    command = ["sbatch", "--parsable", *CPU_NODE, str(SBATCH), "recipe.yaml"]
    command += ["--trainer.default_root_dir", str(run), "--trainer.callbacks+=slurm_helpers.Pace"]
    result = subprocess.run(command, cwd=workdir, env=_job_env(cluster), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().split(";")[0])


def _log(workdir: Path, job: int) -> str:
    path = workdir / "logs" / f"ouro-{job}.out"
    return path.read_text() if path.exists() else ""


def _numbered_steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.ckpt"))


def _wait(what: str, condition, cluster: SlurmCluster, job: int, workdir: Path, timeout: float = 240):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    state = cluster.job(job)
    stacks = _dump_stacks(job)
    pytest.fail(
        f"timed out waiting for {what}; job {job}: {state.get('JobState')}; {stacks}\n"
        f"{_log(workdir, job)[-30000:]}"
    )


def _job_processes(job: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(PID, environment)`` of every process of job ``job`` that can still be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in environ:
            yield int(entry.name), environ


def _job_python_processes(job: int) -> dict[int, int]:
    """The ``ouro`` processes of job ``job`` (its ranks, their worker servers and loader workers; not
    multiprocessing's resource trackers, which SIGUSR2 would end): the parent of each, by PID."""
    found = {}
    for pid, _ in _job_processes(job):
        try:
            executable = os.readlink(f"/proc/{pid}/exe")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = parent_pid(pid)
        except (OSError, ValueError, IndexError):
            continue
        if "python" in Path(executable).name and b"resource_tracker" not in command:
            found[pid] = parent
    return found


def _dump_stacks(job: int) -> str:
    """Have the job's Python processes print their threads' stacks to the job's log, one after the other (for
    a test that failed waiting on the job: where it hangs); which processes, in that order."""
    parents = _job_python_processes(job)
    for pid in parents:
        try:
            os.kill(pid, DUMP_STACKS)
        except ProcessLookupError:
            pass
        time.sleep(1)
    return (
        f"stacks below, in this order, of PIDs {list(parents)}; the parent of each: {list(parents.values())}"
    )


def _training_past(cluster: SlurmCluster, job: int, workdir: Path, run: Path, step: int) -> None:
    """Wait until job ``job`` is running and has written a numbered checkpoint after ``step``."""

    def trained() -> bool:
        state = cluster.job(job).get("JobState")
        if state in ENDED:
            pytest.fail(
                f"job {job} ended ({state}) before it trained past step {step}:\n{_log(workdir, job)}"
            )
        return state == "RUNNING" and any(s > step for s in _numbered_steps(run))

    _wait(f"job {job} to train past step {step}", trained, cluster, job, workdir)


def _ended(cluster: SlurmCluster, job: int, workdir: Path, timeout: float = 240) -> dict[str, str]:
    return _wait(
        f"job {job} to end",
        lambda: (info := cluster.job(job)).get("JobState") in ENDED and info,
        cluster,
        job,
        workdir,
        timeout,
    )


def _rank_pid(job: int, rank: int) -> int:
    """The PID of the training process of ``rank`` (a child of slurmstepd, not one of its loader workers)."""
    for pid, environ in _job_processes(job):
        try:
            parent_name = Path(f"/proc/{parent_pid(pid)}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if f"SLURM_PROCID={rank}".encode() in environ and parent_name == "slurmstepd":
            return pid
    raise AssertionError(f"no training process of rank {rank} in job {job}")


def _final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_bit_identical(mine: dict, reference: dict) -> None:
    """Weights, AdamW state, step, tokens and data position equal, bit for bit."""
    assert mine["global_step"] == reference["global_step"] == MAX_STEPS
    assert mine["ouro"]["tokens_seen"] == reference["ouro"]["tokens_seen"]
    assert mine["state_dict"].keys() == reference["state_dict"].keys()
    for name, value in reference["state_dict"].items():
        assert torch.equal(mine["state_dict"][name], value), name
    mine_adam, reference_adam = (
        mine["optimizer_states"][0]["state"],
        reference["optimizer_states"][0]["state"],
    )
    assert mine_adam.keys() == reference_adam.keys()
    for index, state in reference_adam.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(mine_adam[index][name], state[name]), (index, name)
    position = mine["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == reference["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position[0]["num_samples_yielded"] > 0


def _assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]


def _preempted_steps(workdir: Path, job: int) -> list[int]:
    return [int(s) for s in re.findall(r"ouro: pre-empted \(SIGUSR1\): saved step (\d+)", _log(workdir, job))]


# -------------------------------------------------------------------------------------------------- tests
def test_three_preemptions_resume_bit_identical_to_an_uninterrupted_run(
    slurm, workdir, uninterrupted
) -> None:
    run = workdir / "preempted"
    job = _submit(slurm, workdir, run)
    saved = []
    for restarts in range(3):
        _training_past(slurm, job, workdir, run, saved[-1] if saved else 0)
        # What --signal=SIGUSR1@N sends, now: every task of the job's steps (loader workers included).
        slurm.run("scancel", "--signal=USR1", str(job))
        _wait(
            f"pre-emption {restarts + 1}",
            lambda n=restarts: len(_preempted_steps(workdir, job)) > n,
            slurm,
            job,
            workdir,
        )
        saved = _preempted_steps(workdir, job)
    info = _ended(slurm, job, workdir)
    log = _log(workdir, job)
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert info["Restarts"] == "3"
    assert saved == sorted(saved) and len(set(saved)) == 3, saved
    # Each requeued run resumed from the checkpoint the pre-emption wrote.
    resumed = re.findall(r"ouro: resuming \S+ from (\S+)", log)
    assert resumed == [str(run / "checkpoints" / "last.ckpt")] * 3, log[-3000:]
    assert log.count(f"requeued SLURM job {job}") == 3
    _assert_no_traceback(log)
    _assert_bit_identical(_final_state(run), uninterrupted)


def test_killed_rank_and_scancel_end_with_one_line_and_the_rerun_resumes(
    slurm, workdir, uninterrupted
) -> None:
    run = workdir / "killed"
    # 1. SIGKILL to rank 1: the job ends (srun --kill-on-bad-exit), rank 0 says why in one line.
    first = _submit(slurm, workdir, run)
    _training_past(slurm, first, workdir, run, EVERY)
    os.kill(_rank_pid(first, 1), signal.SIGKILL)
    info = _ended(slurm, first, workdir, timeout=60)
    log = _log(workdir, first)
    assert info["JobState"] == "FAILED", log[-3000:]
    # srun kills rank 0 at once: whether it still says "lost another process" is a race; the script's line ends
    # the log either way.
    assert log.strip().splitlines()[-1].startswith("ouro_fit.sbatch: ouro fit stopped with exit status"), log
    newest = _final_state(run)["global_step"]
    assert newest == max(_numbered_steps(run)) > 0, "last.ckpt is the newest complete checkpoint"
    _assert_no_traceback(log)

    # 2. The rerun resumes from the newest complete checkpoint; scancel (SIGTERM) ends it with one line.
    second = _submit(slurm, workdir, run)
    _training_past(slurm, second, workdir, run, newest)
    slurm.run("scancel", str(second))
    info = _ended(slurm, second, workdir, timeout=60)
    log = _log(workdir, second)
    assert info["JobState"] == "CANCELLED", log[-3000:]
    assert f"ouro: resuming {run} from {run / 'checkpoints' / 'last.ckpt'}" in log
    stopped = [line for line in log.splitlines() if line.startswith("ouro: stopped by SIGTERM")]
    assert len(stopped) == 1 and "a rerun resumes from" in stopped[0], log[-3000:]
    _assert_no_traceback(log)

    # 3. The last rerun finishes where the uninterrupted run finished.
    third = _submit(slurm, workdir, run)
    info = _ended(slurm, third, workdir)
    log = _log(workdir, third)
    assert info["JobState"] == "COMPLETED", log[-3000:]
    _assert_no_traceback(log)
    _assert_bit_identical(_final_state(run), uninterrupted)
