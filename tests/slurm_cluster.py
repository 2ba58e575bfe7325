"""A one-node SLURM for the tests: Debian's slurm-wlm and munge, started in a private folder and torn down.

`start_cluster` installs the packages with apt-get when they are missing (root only), starts ``munged`` unless
one already answers, writes a ``slurm.conf`` for this machine alone (its own ports, state and spool folders under
``folder``) and starts ``slurmctld`` and ``slurmd``. Clients find the cluster through ``SLURM_CONF``
(`SlurmCluster.env`), and jobs inherit it, so nothing under ``/etc/slurm`` is touched. `SlurmCluster.stop` cancels
the cluster's jobs and stops what `start_cluster` started.

``python tests/slurm_cluster.py FOLDER`` starts one by hand (and prints the ``SLURM_CONF`` to export).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class ClusterUnavailable(Exception):
    """SLURM cannot run here; the message says why in one line (the tests skip with it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when one of their programs is missing (root only)."""
    if all(shutil.which(name) for name in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable(
            "SLURM tests need Debian's slurm-wlm and munge: not installed, and installing them needs root and "
            "apt-get (sudo apt-get install slurm-wlm munge)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}")


def _munge_answers() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    if encoded.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def _start_munge() -> bool:
    """Start ``munged`` as user munge unless one answers already; True when this call started it."""
    if _munge_answers():
        return False
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)
    for _ in range(50):
        if _munge_answers():
            return True
        time.sleep(0.1)
    raise RuntimeError("munged started but does not answer on " + str(MUNGE_SOCKET))


def slurm_conf(folder: Path, host: str, cpus: int) -> str:
    """A one-node configuration: this host runs the controller and the only node, with ``cpus`` CPUs."""
    return f"""\
ClusterName=ouro-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobRequeue=1
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s, and the scheduler then
# looks at pending jobs only every sched_interval = 60 s); jobs get 15 s between SIGTERM and SIGKILL (default 30).
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=1
KillWait=15
MailProg=/bin/true
MessageTimeout=20
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


@dataclass
class SlurmCluster:
    """A running one-node cluster (see the module docstring)."""

    folder: Path
    conf: Path
    host: str
    started_munge: bool = False
    pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """This process's environment plus ``SLURM_CONF`` pointing at the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> str:
        """Run a SLURM client (``scontrol``, ``squeue`` ...) against this cluster; its stdout."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stdout

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Reason, Restarts, ExitCode, ...); {} once purged."""
        result = subprocess.run(
            ["scontrol", "-o", "show", "job", str(job_id)], env=self.env, capture_output=True, text=True
        )
        fields = {}
        for word in result.stdout.split():
            name, _, value = word.partition("=")
            fields.setdefault(name, value)
        return fields

    def cancel_all(self) -> None:
        """Cancel every job of this cluster's user."""
        subprocess.run(["scancel", "--full", "--user", getpass.getuser()], env=self.env, capture_output=True)

    def stop(self) -> None:
        self.cancel_all()
        for name in ("slurmd", "slurmctld"):
            pid_file = self.folder / f"{name}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        if self.started_munge:
            pid_file = Path("/run/munge/munged.pid")
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


def start_cluster(folder: Path, cpus: int | None = None) -> SlurmCluster:
    """Install (if needed) and start a one-node cluster whose files live in ``folder``."""
    ensure_installed()
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM tests start slurmctld, slurmd and munged, which needs root")
    folder = Path(folder).absolute()
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host, cpus or os.cpu_count() or 1))
    cluster = SlurmCluster(folder, conf, host, started_munge=_start_munge())
    try:
        env = cluster.env
        subprocess.run(["slurmctld", "-c", "-f", str(conf)], env=env, check=True, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", host], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-n", host, "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if state.startswith("idle"):
                return cluster
            time.sleep(0.5)
        log = (folder / "slurmctld.log").read_text()[-1500:] if (folder / "slurmctld.log").exists() else ""
        raise RuntimeError(f"the test SLURM node did not become idle within 60 s (state {state!r}): {log}")
    except BaseException:
        cluster.stop()
        raise


if __name__ == "__main__":
    running = start_cluster(Path(sys.argv[1]))
    print(f"export SLURM_CONF={running.conf}")
