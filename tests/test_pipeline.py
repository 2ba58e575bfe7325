"""`ouro pipeline`: parsing, stage ordering, skipping finished stages, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ouro.pipeline import PipelineError, load_pipeline, pipeline, run_stage
from ouro.preemption import EXIT_PREEMPTED
from ouro.run_dir import mark_complete

RECIPE = "trainer:\n  default_root_dir: runs/{name}\n"


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("warmup", "stable", "big"):
        (tmp_path / f"{name}.yaml").write_text(RECIPE.format(name=name))
    return tmp_path


def test_stages_resolve_names_run_dirs_and_init_from(recipes):
    (recipes / "p.yaml").write_text(
        "stages:\n  - warmup.yaml\n  - {recipe: stable.yaml, init_from: warmup}\n"
        "  - {name: stable-2.6b, recipe: [stable.yaml, big.yaml], init_from: warmup, args: [--x, 1]}\n"
    )
    stages = load_pipeline(recipes / "p.yaml")
    assert [s.name for s in stages] == ["warmup", "stable", "stable-2.6b"]
    # Without run_root a stage runs where its (last) recipe puts it; the name is the stage's label.
    assert [s.run_dir for s in stages] == ["runs/warmup", "runs/stable", "runs/big"]
    assert stages[1].init_from == "runs/warmup" and stages[2].init_from == "runs/warmup"
    command = stages[2].command()
    assert command[command.index("fit") :] == [
        "fit",
        "--config",
        "stable.yaml",
        "--config",
        "big.yaml",
        "--trainer.default_root_dir",
        "runs/big",
        "--model.init_from",
        "runs/warmup",
        "--x",
        "1",
    ]


def test_run_root_places_every_stage(recipes):
    (recipes / "p.yaml").write_text("run_root: runs/tiny\nstages:\n  - warmup.yaml\n  - stable.yaml\n")
    assert [s.run_dir for s in load_pipeline(recipes / "p.yaml")] == ["runs/tiny/warmup", "runs/tiny/stable"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: []\n", "non-empty 'stages'"),
        ("stages:\n  - missing.yaml\n", "missing.yaml does not exist"),
        ("stages:\n  - warmup.yaml\n  - warmup.yaml\n", "used twice"),
        ("stages:\n  - {recipe: stable.yaml, init_from: nowhere}\n", "names no earlier stage"),
        ("stagez:\n  - warmup.yaml\n", "unknown keys"),
        ("stages:\n  - {recipe: warmup.yaml, colour: red}\n", "colour"),
    ],
)
def test_bad_pipeline_files_name_the_problem(recipes, text, message):
    (recipes / "p.yaml").write_text(text)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(recipes / "p.yaml")


def test_finished_stages_are_skipped_and_dry_run_prints(recipes, capsys):
    (recipes / "p.yaml").write_text(
        "stages:\n  - warmup.yaml\n  - {recipe: stable.yaml, init_from: warmup}\n"
    )
    pipeline(str(recipes / "p.yaml"), dry_run=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ouro fit --config warmup.yaml") and "--model.init_from runs/warmup" in out[1]
    for name in ("warmup", "stable"):
        Path("runs", name).mkdir(parents=True)
        mark_complete(Path("runs", name), {"stage": name})
    pipeline(str(recipes / "p.yaml"))  # nothing to run: both complete
    assert capsys.readouterr().out.count("skipped") == 2


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_pipeline_kills_its_stage(tmp_path, how):
    """A stage never goes on alone (and later marks itself complete) after its pipeline is killed."""
    (tmp_path / "long.yaml").write_text("trainer:\n  max_steps: 100000\n")
    (tmp_path / "p.yaml").write_text("run_root: runs\nstages:\n  - long.yaml\n")
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{root}"}
    command = [sys.executable, "-m", "ouro.cli", "pipeline", "p.yaml"]
    parent = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (stages := _children(parent.pid)) and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    assert stages, parent.stderr.read().decode()[-2000:] if parent.poll() is not None else "no stage started"
    time.sleep(0.5)  # the stage is running (importing) when its parent goes
    os.kill(parent.pid, how)
    code = parent.wait(timeout=60)
    assert code == (-signal.SIGKILL if how == signal.SIGKILL else 128 + signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in stages) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in stages), "the stage outlived its pipeline"
    assert not (tmp_path / "runs" / "long" / "stage_complete.json").exists()


def test_a_preemption_warning_is_passed_to_the_stage_and_ends_the_pipeline_quietly(
    tmp_path, recipes, monkeypatch, capsys
):
    """SIGUSR1 to the pipeline reaches its stage (which saves and exits 75), and the pipeline then exits 75 with
    no 'stage failed' error: a rerun or the requeued job resumes the stage."""
    ready = tmp_path / "ready"
    stage = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75)); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60); sys.exit(1)"
    )

    def warn_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)

    warner = threading.Thread(target=warn_when_ready)
    warner.start()
    assert run_stage([sys.executable, "-c", stage]) == EXIT_PREEMPTED
    warner.join()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "the pipeline's handler is removed again"

    (recipes / "p.yaml").write_text("stages:\n  - warmup.yaml\n  - stable.yaml\n")
    started = []
    monkeypatch.setattr("ouro.pipeline.run_stage", lambda command: started.append(command) or EXIT_PREEMPTED)
    with pytest.raises(SystemExit) as exited:
        pipeline(str(recipes / "p.yaml"))
    assert exited.value.code == EXIT_PREEMPTED and len(started) == 1, "the next stage does not start"
    assert not (recipes / "runs" / "warmup" / "stage_complete.json").exists()
