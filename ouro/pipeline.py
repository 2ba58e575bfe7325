"""``ouro pipeline``: run the stages of a pipeline file in order, each from the previous stage's output.

A pipeline file lists stages; each stage is one or more recipe files given to ``ouro fit`` (composed left to right)
plus optional overrides::

    run_root: runs/tiny              # optional: every stage runs in RUN_ROOT/NAME
    stages:
      - recipe: recipes/tiny/warmup.yaml
      - name: stable
        recipe: recipes/tiny/stable.yaml
        init_from: warmup            # a stage name (its run directory) or any init_from value
        args: [--trainer.max_steps, "40"]

A stage whose run directory holds ``stage_complete.json`` is skipped; an interrupted stage resumes from its
``checkpoints/last.ckpt`` (``ouro fit`` does that by itself). Each stage runs in a fresh process that never
outlives the pipeline: on Linux the kernel kills it when the pipeline process dies (``PR_SET_PDEATHSIG``, so even
``kill -9`` of the pipeline takes the stage with it), and SIGTERM / SIGINT / SIGHUP sent to the pipeline are
passed on to the stage before the pipeline exits. SIGUSR1, SLURM's pre-emption warning, is passed on too: the stage
saves at its next step and exits with `ouro.preemption.EXIT_PREEMPTED`, and so does the pipeline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from ouro.child_processes import die_with_parent
from ouro.errors import PipelineError
from ouro.preemption import EXIT_PREEMPTED
from ouro.preflight import yaml_syntax_problem
from ouro.recipe_yaml import read_recipe
from ouro.run_dir import is_complete, mark_complete


@dataclass
class Stage:
    """One stage of a pipeline."""

    name: str
    recipes: list[str]
    run_dir: str
    init_from: str | None = None
    args: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ouro.cli", "fit"]
        for recipe in self.recipes:
            cmd += ["--config", recipe]
        cmd += ["--trainer.default_root_dir", self.run_dir]
        if self.init_from:
            cmd += ["--model.init_from", self.init_from]
        return cmd + self.args


def _recipe_value(recipes: list[str], dotted: str) -> str | None:
    """The last value of a dotted key (e.g. ``trainer.default_root_dir``) across the recipes, if set."""
    value = None
    for recipe in recipes:
        node = read_recipe(recipe) or {}
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            value = str(node)
    return value


def load_pipeline(path: str | Path) -> list[Stage]:
    """Parse and check a pipeline file: recipes exist, names are unique, ``init_from`` names resolve."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {path} does not exist (see recipes/pipelines/ for examples)")
    problem = yaml_syntax_problem(path)
    if problem:
        raise PipelineError(f"pipeline file {path} is not valid YAML: {problem}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"run_root", "stages"} if isinstance(spec, dict) else set()
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}; allowed: run_root, stages")
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise PipelineError(f"{path}: expected a mapping with a non-empty 'stages' list")
    run_root = spec.get("run_root")
    stages: list[Stage] = []
    by_name: dict[str, Stage] = {}
    for index, entry in enumerate(spec["stages"]):
        where = f"{path}: stages[{index}]"
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict) or "recipe" not in entry:
            raise PipelineError(f"{where} needs a 'recipe' (a recipe path or a list of them)")
        unknown = set(entry) - {"name", "recipe", "init_from", "args"}
        if unknown:
            raise PipelineError(
                f"{where}: unknown keys {sorted(unknown)}; allowed: name, recipe, init_from, args"
            )
        recipes = entry["recipe"] if isinstance(entry["recipe"], list) else [entry["recipe"]]
        for recipe in recipes:
            if not Path(recipe).is_file():
                raise PipelineError(f"{where}: recipe {recipe} does not exist")
            problem = yaml_syntax_problem(Path(recipe))
            if problem:
                raise PipelineError(f"{where}: recipe {recipe} is not valid YAML: {problem}")
        recipe_dir = _recipe_value(recipes, "trainer.default_root_dir")
        name = entry.get("name") or (Path(recipe_dir).name if recipe_dir else Path(recipes[-1]).stem)
        if name in by_name:
            raise PipelineError(
                f"{where}: stage name {name!r} is used twice; give one of them another 'name'"
            )
        if run_root:
            run_dir = f"{run_root}/{name}"
        elif recipe_dir:
            run_dir = recipe_dir
        else:
            raise PipelineError(
                f"{where}: set trainer.default_root_dir in the recipe or run_root in the pipeline"
            )
        init_from = entry.get("init_from")
        if init_from in by_name:
            init_from = by_name[init_from].run_dir
        elif init_from is not None and not Path(init_from).exists() and "/" not in init_from:
            raise PipelineError(
                f"{where}: init_from {init_from!r} names no earlier stage ({sorted(by_name)})"
            )
        args = [str(a) for a in entry.get("args", [])]
        stage = Stage(
            name=name, recipes=[str(r) for r in recipes], run_dir=run_dir, init_from=init_from, args=args
        )
        stages.append(stage)
        by_name[name] = stage
    return stages


#: Signals the pipeline passes on to its running stage: the stop signals, and the pre-emption warning.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
#: Passed on without stopping the pipeline: the stage saves, says so and exits with `EXIT_PREEMPTED`.
WARNING_SIGNALS = (signal.SIGUSR1,)


def run_stage(command: list[str]) -> int:
    """Run one stage's command as a child that cannot outlive this process; return its exit code.

    A forwarded stop signal stops the stage, and the pipeline then exits with 128 + the signal's number; a
    pre-emption warning (`WARNING_SIGNALS`) is only passed on.
    """
    # Its own process group: a Ctrl-C at the terminal reaches the pipeline only, which passes it on once.
    child = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=partial(die_with_parent, os.getpid()),
        process_group=0,
    )
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if signum not in WARNING_SIGNALS:
            received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.kill()
            child.wait()
    if received:
        print(f"ouro pipeline: stopped by signal {received[0]}; rerun to resume", file=sys.stderr, flush=True)
        raise SystemExit(128 + received[0])
    return code


def pipeline(file: str, only: list[str] | None = None, dry_run: bool = False, redo: bool = False) -> None:
    """Run a pipeline of stages (e.g. recipes/pipelines/tiny.yaml) in order, skipping finished stages.

    Args:
        file: The pipeline YAML: a ``stages`` list of recipes with optional names, ``init_from`` and extra args.
        only: Run just these stage names (their predecessors must have finished).
        dry_run: Print the commands without running them.
        redo: Run stages even if they are marked complete (an existing checkpoint is still resumed).
    """
    stages = load_pipeline(file)
    names = [s.name for s in stages]
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise PipelineError(f"--only names unknown stages {missing}; stages are {names}")
    for stage in stages:
        if only and stage.name not in only:
            continue
        command = stage.command()
        if dry_run:
            print(" ".join(command[2:]).replace("ouro.cli", "ouro", 1))
            continue
        if is_complete(stage.run_dir) and not redo:
            print(f"ouro pipeline: {stage.name}: complete ({stage.run_dir}), skipped", flush=True)
            continue
        print(f"ouro pipeline: {stage.name}: {' '.join(command[3:])}", flush=True)
        started = time.time()
        returncode = run_stage(command)
        if returncode == EXIT_PREEMPTED:  # the stage saved its state and said so; a rerun resumes it
            raise SystemExit(EXIT_PREEMPTED)
        if returncode != 0:
            raise PipelineError(
                f"stage {stage.name} failed (exit {returncode}); fix it and rerun the "
                f"pipeline: finished stages are skipped and {stage.run_dir} resumes"
            )
        mark_complete(
            stage.run_dir,
            {
                "stage": stage.name,
                "recipes": stage.recipes,
                "init_from": stage.init_from,
                "seconds": round(time.time() - started, 1),
            },
        )
    if not dry_run:
        print("ouro pipeline: all stages complete", flush=True)
