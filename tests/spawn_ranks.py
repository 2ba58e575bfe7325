"""Launch `ouro fit` as several ranks on this machine (CPU, gloo), and record what each rank trained on.

``python -m spawn_ranks ARGS`` is the `ouro` command followed by a process-group teardown (without it a gloo
process sometimes aborts at interpreter exit after training has finished); `torchrun` and `run_ranks` start it.
The callbacks here are named by ``class_path: spawn_ranks.<Name>`` in the recipes the tests write.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A rank still running this many seconds before its launcher's timeout prints every thread's stack and exits,
#: so that a hang fails its test with the place where each rank waits (the launcher's kill would show nothing).
WATCHDOG_MARGIN_S = 20


def _env(extra: dict[str, str] | None = None, timeout: int = 240) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        SPAWN_RANKS_WATCHDOG_S=str(max(timeout - WATCHDOG_MARGIN_S, 1)),
        **(extra or {}),
    )


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def torchrun(args: list[str], nproc: int, nnodes: int = 1, timeout: int = 240) -> str:
    """``torchrun --nproc_per_node NPROC -m spawn_ranks ARGS`` (one node); returns stdout + stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += [f"--master_port={free_port()}", "-m", "spawn_ranks", *args]
    return _check(
        subprocess.run(
            command, env=_env(timeout=timeout), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    )


def one_process(args: list[str], timeout: int = 240) -> str:
    """``python -m spawn_ranks ARGS`` in a fresh process (one rank); returns stdout + stderr."""
    command = [sys.executable, "-m", "spawn_ranks", *args]
    return _check(
        subprocess.run(
            command, env=_env(timeout=timeout), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    )


def nodes(commands: list[tuple[list[str], dict[str, str]]], timeout: int = 240) -> list[str]:
    """Start one process per ``(argv after python, extra environment)`` at once (the "nodes" of a multi-node
    run on this machine) and wait for all; returns each one's stdout + stderr."""
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env=_env(extra, timeout),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv, extra in commands
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, out[-3000:] + err[-6000:]
            outputs.append(out + err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


class StepRecorder(L.Callback):
    """Appends one JSON line per training batch to ``<out_dir>/rank<r>.jsonl``: the rows of the batch (their
    input ids: the row's identity), the global step, tokens seen, the learning rate and RoPE base in force."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._rows = batch["input_ids"].tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = dict(
            step=trainer.global_step,
            world=trainer.world_size,
            rows=self._rows,
            tokens_seen=int(pl_module.tokens_seen),
            lr=trainer.optimizers[0].param_groups[0]["lr"],
            rope_theta=float(pl_module.config.rope_theta),
            loops=int(pl_module.config.total_ut_steps),
            accumulate=trainer.accumulate_grad_batches,
            loss=float(outputs["loss"]),
        )
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class EvalDump(L.Callback):
    """At the end of training writes ``<out_dir>/eval<r>.json``: each `EvalInTraining` evaluation's metrics and
    how many built-in questions this rank scored (list it after EvalInTraining, whose last evaluation runs at
    train end)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        from ouro.callbacks import EvalInTraining

        evals = [c for c in trainer.callbacks if isinstance(c, EvalInTraining)]
        record = [{"history": c.history, "scored_here": c.scored_here} for c in evals]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"eval{trainer.global_rank}.json").write_text(json.dumps(record))


def read_steps(out_dir: Path) -> list[dict]:
    """Every rank's rows of `StepRecorder`, in file order."""
    lines = []
    for path in sorted(Path(out_dir).glob("rank*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


if __name__ == "__main__":
    from ouro.cli import main

    torch.set_num_threads(1)
    if os.environ.get("SPAWN_RANKS_WATCHDOG_S"):
        faulthandler.dump_traceback_later(float(os.environ["SPAWN_RANKS_WATCHDOG_S"]), exit=True)
    main(sys.argv[1:])
    if dist.is_initialized():
        dist.destroy_process_group()
