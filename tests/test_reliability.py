"""Crash safety of `ouro fit` and `ouro export`: kill -9, truncated checkpoints, full disks, bad input, temp files.

Faults are injected, not waited for: ``reliability_helpers`` kills a subprocess fit in the middle of a checkpoint
write or of a training step, and makes a write fail with ``ENOSPC`` partway. Fits are tiny (2 layers, hidden 64,
a few steps); only the kill -9 runs use subprocesses.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import failing_checkpoint_writes

from ouro.checkpoint_io import SHARDED_MARKER, AtomicCheckpointIO, AtomicShardedSave
from ouro.cli import main
from ouro.errors import ResumeError, WriteError, plain_message
from ouro.preflight import check_recipe_syntax
from ouro.recipe_yaml import RecipeError
from ouro.resume import (
    UntrustedCheckpointError,
    check_resume_settings,
    inspect_checkpoint,
    newest_readable_checkpoint,
)
from ouro.run_dir import release_run_scratch, use_run_scratch
from ouro.trainer_cli import check_sequence_fits

TESTS = Path(__file__).parent
ROOT = TESTS.parent

RECIPE = """\
seed_everything: 3
cpu_threads: 1
trainer:
  accelerator: cpu
  max_steps: {steps}
  enable_progress_bar: false
  enable_model_summary: false
  val_check_interval: 1000
  check_val_every_n_epoch: null
  limit_val_batches: 0
  num_sanity_val_steps: 0
  logger: false
model:
  model:
    vocab_size: 512
    hidden_size: 64
    intermediate_size: 172
    num_hidden_layers: 2
    num_attention_heads: 4
    num_key_value_heads: 4
    max_position_embeddings: 64
    total_ut_steps: 2
  entropy_coef: 0.05
data:
  class_path: reliability_helpers.ResumableToyDataModule
  init_args:
    seq_len: 16
    batch_size: 2
"""


def _recipe(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / f"r{steps}.yaml"
    path.write_text(RECIPE.format(steps=steps))
    return path


def _fit_args(recipe: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(recipe), "--trainer.default_root_dir", str(run), *extra]


def _fit_in_process(*args: str) -> None:
    from ouro.trainer_cli import run_trainer_cli

    run_trainer_cli(list(args))


def _ouro_with_fault(fault: str, args: list[str], cwd: Path, temp: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
        "TMPDIR": str(temp),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "reliability_helpers", fault, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["ouro"]["tokens_seen"] == b["ouro"]["tokens_seen"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for state_a, state_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[name], state_b[name]), name


# --------------------------------------------------------------------------------------------- kill -9 and resume
def test_kill_nine_resumes_bit_for_bit(tmp_path):
    """Killed mid-step, then mid-checkpoint-write; the rerun ends exactly where an uninterrupted run ends."""
    recipe = _recipe(tmp_path, 6)
    reference = tmp_path / "ref"
    _fit_in_process(*_fit_args(recipe, reference, "--checkpoint_every_n_steps", "2"))

    run, temp = tmp_path / "r", tmp_path / "systemp"  # short: the run's temp dir must hold Unix sockets
    temp.mkdir()
    args = _fit_args(recipe, run, "--checkpoint_every_n_steps", "2")
    checkpoints = run / "checkpoints"
    # 1. Killed in the middle of step 4's forward pass: step 2's checkpoints are what is left.
    first = _ouro_with_fault("kill_at_step:3", args, tmp_path, temp)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert _load(checkpoints / "last.ckpt")["global_step"] == 2
    # 2. Resumed, then killed while writing step 4's last.ckpt (its step-4 file was written just before).
    second = _ouro_with_fault("kill_in_checkpoint:2", args, tmp_path, temp)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "resuming" in second.stderr
    assert _load(checkpoints / "last.ckpt")["global_step"] == 2, "the previous last.ckpt is intact"
    assert _load(checkpoints / "step-00000004.ckpt")["global_step"] == 4
    partial = list(checkpoints.glob(".tmp-last.ckpt.*"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < (checkpoints / "last.ckpt").stat().st_size
    assert list(temp.iterdir()) == [], "killed runs leave nothing in the system temp dir"
    # 3. The rerun resumes from the newest complete checkpoint (step 4) and ends where the reference ended.
    _fit_in_process(*args)
    _assert_same_training_state(
        _load(checkpoints / "last.ckpt"), _load(reference / "checkpoints" / "last.ckpt")
    )
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["last.ckpt", "step-00000002.ckpt", "step-00000004.ckpt", "step-00000006.ckpt"]
    assert not (run / ".tmp").exists()
    # 4. A truncated last.ckpt (a full disk under another writer): moved aside, step 6 resumed, step 8 reached.
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    _fit_in_process(*_fit_args(_recipe(tmp_path, 8), run, "--checkpoint_every_n_steps", "2"))
    assert _load(last)["global_step"] == 8
    assert len(list(checkpoints.glob("last.ckpt.unreadable-*"))) == 1


# ------------------------------------------------------------------------------------- checkpoint selection
def _tiny_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((64,), float(step))}, "global_step": step}, path)
    return path


def _age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def test_truncated_last_checkpoint_is_moved_aside_and_the_newest_good_one_used(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    older = _tiny_checkpoint(folder / "step-00000002.ckpt", 2)
    _age(older, 20)
    good = _tiny_checkpoint(folder / "step-00000004.ckpt", 4)
    _age(good, 10)
    last = _tiny_checkpoint(folder / "last.ckpt", 6)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (folder / ".tmp-last.ckpt.1234abcd").write_bytes(b"partial")

    found = newest_readable_checkpoint(tmp_path, move_aside=True)
    assert found.path == good and found.checkpoint["global_step"] == 4
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "last.ckpt is unreadable" in err
        and "moved it to last.ckpt.unreadable-" in err
    )
    aside = list(folder.glob("last.ckpt.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0, "moved aside, never deleted"
    assert not list(folder.glob(".tmp-*")), "leftovers of interrupted writes are removed"

    # Without moving (init_from reads another stage's folder): skipped with one line, left where it is.
    _tiny_checkpoint(folder / "last.ckpt", 6).write_bytes(b"PK\x03\x04 truncated")
    assert newest_readable_checkpoint(tmp_path).path == good
    assert (folder / "last.ckpt").exists()


def test_no_readable_checkpoint_names_every_one(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    (folder / "step-00000002.ckpt").write_bytes(b"garbage")
    _age(folder / "step-00000002.ckpt", 10)
    with pytest.raises(ResumeError, match=r"no readable checkpoint .*last\.ckpt, step-00000002\.ckpt"):
        newest_readable_checkpoint(tmp_path)
    err = capsys.readouterr().err  # each one's reason on its own line
    assert re.search(r"last\.ckpt is unreadable \(.+\)", err) and "step-00000002.ckpt is unreadable" in err
    assert newest_readable_checkpoint(tmp_path / "elsewhere") is None


def test_checkpoint_refused_by_weights_only_is_named_and_not_loaded(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "global_step": 1, "extra": ValueError("pickled object")}, path)
    with pytest.raises(
        UntrustedCheckpointError,
        match=r"last\.ckpt was not loaded: .*weights_only=True\) refuses it \(it holds a pickled [a-z]+\.ValueError",
    ):
        newest_readable_checkpoint(tmp_path, move_aside=True)
    assert path.exists(), "an untrusted checkpoint is not moved: it is not damaged"


def test_sharded_folder_counts_only_with_its_marker(tmp_path):
    folder = tmp_path / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    torch.save({"global_step": 3, "loops": {}}, folder / "meta.pt")
    assert "did not finish" in inspect_checkpoint(folder).problem
    (folder / SHARDED_MARKER).write_text("{}\n")
    assert inspect_checkpoint(folder).problem is None


class _FakeShardedParent:
    """What a sharded strategy does: every rank writes files into the folder it is given."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        Path(filepath).mkdir(parents=True, exist_ok=True)
        for name, value in checkpoint.items():
            torch.save(value, Path(filepath) / f"{name}.pt")


class _FakeShardedStrategy(AtomicShardedSave, _FakeShardedParent):
    _state_dict_type = "sharded"
    global_rank, world_size = 0, 1

    def __init__(self):
        self.barriers = []

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        self.barriers.append(name)
        # Mid-save: the final folder still holds the previous complete checkpoint.
        if name == "ouro_sharded_checkpoint_written":
            assert not (self.final / "new.pt").exists()


def test_sharded_checkpoint_appears_complete_or_not_at_all(tmp_path):
    strategy = _FakeShardedStrategy()
    strategy.final = tmp_path / "last.ckpt"
    strategy.save_checkpoint({"old": torch.zeros(2)}, strategy.final)
    strategy.save_checkpoint({"new": torch.ones(2)}, strategy.final)
    assert sorted(p.name for p in strategy.final.iterdir()) == sorted([SHARDED_MARKER, "new.pt"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no staging folder is left"
    assert strategy.barriers.count("ouro_sharded_checkpoint_in_place") == 2


# ---------------------------------------------------------------------------------------------- full disk
def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4096)}, "global_step": 1}, path)
    before = _digest(path)
    monkeypatch.setattr("ouro.checkpoint_io.atomic_open", failing_checkpoint_writes(on_write=1))
    with pytest.raises(WriteError) as raised:
        io.save_checkpoint({"state_dict": {"w": torch.ones(4096)}, "global_step": 2}, path)
    message = str(raised.value)
    # The space needed is the larger of the tensors' bytes (16 KiB) and the size of the previous file.
    needed = max(4096 * 4, path.stat().st_size) / 1024
    assert f"{path}: No space left on device (needs about {needed:.1f} KiB" in message
    assert "the previous last.ckpt is intact" in message and raised.value.errno == errno.ENOSPC
    assert _digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_short_free_space_warns_before_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("ouro.checkpoint_io.free_bytes", lambda directory: 20_000)
    with pytest.warns(
        UserWarning, match=r"only 19\.5 KiB free .* needs about 16\.0 KiB: the next checkpoint"
    ):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4096)}}, tmp_path / "a.ckpt")


def test_full_disk_during_fit_is_one_line_exit_1_and_the_last_checkpoint_survives(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    # Writes: step-2 (1), last at step 2 (2), step-4 (3), last at step 4 (4): the disk fills up during the 4th.
    monkeypatch.setattr("ouro.checkpoint_io.atomic_open", failing_checkpoint_writes(on_write=4))
    with pytest.raises(SystemExit) as exited:
        main(_fit_args(_recipe(tmp_path, 6), run, "--checkpoint_every_n_steps", "2"))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("ouro: error:")]
    assert "could not write checkpoint" in line and "last.ckpt: No space left on device" in line
    assert "the previous last.ckpt is intact" in line and "Traceback" not in err
    checkpoints = run / "checkpoints"
    assert _load(checkpoints / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt",
        "step-00000002.ckpt",
        "step-00000004.ckpt",
    ]
    assert not (run / "stage_complete.json").exists()


def test_full_disk_during_export_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer

    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    source = write_fit_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.ckpt", build_tiny_model(gate_std=0.5), tokenizer=tokenizer
    )
    out = tmp_path / "export"
    main(["export", str(source), str(out)])
    before = {p.name: _digest(p) for p in out.iterdir()}
    (tmp_path / f".tmp-export.{'0' * 8}").mkdir()  # the hidden partial folder of an interrupted export

    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(SystemExit) as exited:
        main(["export", str(source), str(out), "--overwrite", "true"])
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"ouro: error: could not write export {out}: No space left on device (needs about")
    assert f"the previous export {out} is intact" in line
    assert {p.name: _digest(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run", "tokenizer.json"]


# --------------------------------------------------------------------------------------- one line, not a traceback
def test_resume_with_changed_data_settings_names_the_value(tmp_path):
    checkpoint = {"callbacks": {"OuroResumeSettings": {"seq_len": 16, "batch_size": 2, "num_workers": 1}}}
    check_resume_settings(checkpoint, {"seq_len": 16, "batch_size": 2}, Path("last.ckpt"), tmp_path)
    with pytest.raises(ResumeError) as raised:
        check_resume_settings(checkpoint, {"seq_len": 32, "batch_size": 2}, Path("last.ckpt"), tmp_path)
    message = str(raised.value)
    assert "data.seq_len is 32 but last.ckpt was trained with 16" in message and "batch_size" not in message
    assert "keep the old value" in message and f"--model.init_from {tmp_path}" in message


def test_resume_with_another_batch_size_is_refused_by_ouro_fit(tmp_path, capsys):
    recipe, run = _recipe(tmp_path, 1), tmp_path / "run"
    _fit_in_process(*_fit_args(recipe, run))
    with pytest.raises(SystemExit) as exited:
        main(_fit_args(_recipe(tmp_path, 2), run, "--data.init_args.batch_size", "3"))
    assert exited.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"ouro: error: cannot resume {run}: data.batch_size is 3 but last.ckpt was trained with 2. The data-loader "
        "position only resumes with the same values: keep the old value(s), or start a new stage in another run "
        f"directory with --model.init_from {run}"
    )
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 1
    # Resumed with another checkpoint interval (a new ModelCheckpoint state): one last.ckpt, no last-v1.ckpt.
    _fit_in_process(*_fit_args(_recipe(tmp_path, 2), run, "--checkpoint_every_n_steps", "1"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-00000002.ckpt"]
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("trainer:\n  max_steps: 3\n  callbacks: [a, b\nmodel:\n  x: 1\n")
    with pytest.raises(RecipeError, match=r"recipe .*broken\.yaml is not valid YAML: line 4, column 6: "):
        check_recipe_syntax(["fit", "--config", str(recipe)])
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={recipe}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "line 4" in err and "usage" not in err


def test_jsonargparse_union_error_becomes_the_reason():
    text = (
        "Does not validate against any of the Union subtypes\nSubtypes: [<class 'A'>, <class 'NoneType'>]\n"
        "Errors:\n  - seq_len and batch_size must be >= 1 and num_workers >= 0, got 16, 0, 1\n"
        "  - Expected a <class 'NoneType'>\nGiven value type: <class 'Namespace'>\nGiven value: Namespace(x=1)"
    )
    assert (
        plain_message(ValueError(text))
        == "seq_len and batch_size must be >= 1 and num_workers >= 0, got 16, 0, 1"
    )
    assert plain_message(ValueError("a\n  b")) == "a b"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/logs/metrics.csv")
    assert plain_message(full).startswith(
        "No space left on device writing runs/x/logs/metrics.csv; what ouro"
    )


def test_sequence_longer_than_the_positions_is_refused():
    from ouro.callbacks import LongContextSchedule
    from ouro.data.base import OuroDataModule

    class Data(OuroDataModule):
        seq_len = 128

    check_sequence_fits(128, Data(), [])
    with pytest.raises(
        RecipeError, match=r"data\.seq_len is 128 but model\.model\.max_position_embeddings is 64"
    ):
        check_sequence_fits(64, Data(), [])
    with pytest.raises(RecipeError, match=r"LongContextSchedule\.seq_len is 512"):
        check_sequence_fits(256, Data(), [LongContextSchedule(seq_len=512)])


# ------------------------------------------------------------------------------------------------ temp files
def test_run_scratch_lives_in_the_run_and_is_emptied_and_restored(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    before = tempfile.gettempdir()
    root = tmp_path / "r"
    stale = root / ".tmp" / "0" / "pymp-left-by-kill-9"
    stale.mkdir(parents=True)
    scratch = use_run_scratch(root)
    try:
        assert scratch == root.absolute() / ".tmp" / "0" and not stale.exists()
        assert tempfile.gettempdir() == str(scratch) and os.environ["TMPDIR"] == str(scratch)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root.absolute() / "cache" / "torchinductor")
    finally:
        release_run_scratch()
    assert tempfile.gettempdir() == before and not (root / ".tmp").exists()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ

    deep = tmp_path / ("d" * 80)
    scratch = use_run_scratch(deep)
    try:
        assert scratch.parent.parent == Path(before) and len(str(scratch)) < len(str(deep))
    finally:
        release_run_scratch()
    assert not scratch.parent.exists()


def test_quickstart_paths_follow_the_run_directory(tmp_path):
    """Every path of the quickstart recipe derives from trainer.default_root_dir (no hard-coded runs/quickstart),
    so a rerun with another run directory resumes there and --checkpoint_every_n_steps applies."""
    from lightning import LightningDataModule

    from ouro.module import OuroLM
    from ouro.recipe_yaml import configure_parsing
    from ouro.run_dir import RunConfigCallback
    from ouro.trainer_cli import OuroCLI

    configure_parsing()
    run = tmp_path / "elsewhere"
    args = ["--config", str(ROOT / "recipes" / "quickstart.yaml"), "--trainer.default_root_dir", str(run)]
    try:
        cli = OuroCLI(
            OuroLM,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            auto_configure_optimizers=False,
            run=False,
            args=[*args, "--checkpoint_every_n_steps", "7"],
        )
    finally:
        release_run_scratch()
    trainer = cli.trainer
    assert Path(trainer.checkpoint_callback.dirpath) == run / "checkpoints"
    assert trainer.checkpoint_callback._every_n_train_steps == 7
    assert {Path(logger.save_dir) for logger in trainer.loggers} == {run}
    assert (ROOT / "recipes" / "quickstart.yaml").read_text().count("runs/quickstart") == 1  # the default


def test_generation_past_the_positions_is_refused():
    from ouro.config import OuroConfig
    from ouro.generation.generate import generate
    from ouro.model import OuroForCausalLM

    config = OuroConfig.preset("tiny").replace(max_position_embeddings=16)
    model = OuroForCausalLM(config)
    assert len(generate(model, list(range(1, 11)), max_new_tokens=6).tokens[0]) <= 6  # 10 + 6 fit exactly
    with pytest.raises(
        ValueError,
        match=r"prompt \(10 tokens\) plus max_new_tokens \(7\) needs 17 positions .* 16; "
        r"lower max_new_tokens to 6",
    ):
        generate(model, list(range(1, 11)), max_new_tokens=7)
    with pytest.raises(ValueError, match="shorten the prompt"):
        generate(model, list(range(1, 17)), max_new_tokens=1)


def test_compile_caches_go_under_the_run_directory(tmp_path, monkeypatch):
    import tempfile

    from ouro.preflight import CACHES_CHOSEN_BY_OURO, choose_compile_caches, hold_compile_caches

    monkeypatch.delenv(CACHES_CHOSEN_BY_OURO, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/mine")
    hold_compile_caches()
    choose_compile_caches(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/mine", "the user's choice wins"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    hold_compile_caches()  # while the arguments are read: a folder that exists, so importing torch creates none
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == tempfile.gettempdir()
    monkeypatch.chdir(tmp_path)
    use_run_scratch("runs/a")  # the recipe is read: the run's own cache
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "runs" / "a" / "cache" / "torchinductor")
    release_run_scratch()
    use_run_scratch("runs/c")  # a pipeline's next stage
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "runs" / "c" / "cache" / "triton")
    release_run_scratch()
    assert not (tmp_path / "runs").exists(), "nothing was written: the folders it created are gone"


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size)``: a real tmpfs of ``size`` bytes (needs root with mount rights; skipped elsewhere)."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / "small"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a small tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_real_full_disk_during_export_keeps_the_previous_export(tmp_path, small_filesystem, capsys):
    """The same guarantee on a real filesystem that fills up: the second export needs room for both copies."""
    from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer

    tokenizer = write_word_tokenizer(tmp_path / "t.json")
    source = write_fit_checkpoint(tmp_path / "last.ckpt", build_tiny_model(gate_std=0.5), tokenizer=tokenizer)
    main(["export", str(source), str(tmp_path / "measure")])
    size = sum(p.stat().st_size for p in (tmp_path / "measure").iterdir())
    out = small_filesystem(size * 3 // 2) / "export"  # room for one export, not for two
    main(["export", str(source), str(out)])
    before = {p.name: _digest(p) for p in out.iterdir()}
    with pytest.raises(SystemExit) as exited:
        main(["export", str(source), str(out), "--overwrite", "true"])
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"ouro: error: could not write export {out}: No space left on device (needs about")
    assert line.endswith(f"the previous export {out} is intact")
    assert {p.name: _digest(p) for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["export"], "the partial export is removed"


def test_real_full_disk_during_fit_warns_first_and_keeps_last_checkpoint(tmp_path, small_filesystem, capsys):
    recipe = _recipe(tmp_path, 1)
    _fit_in_process(*_fit_args(recipe, tmp_path / "measure"))
    size = (tmp_path / "measure" / "checkpoints" / "last.ckpt").stat().st_size
    run = (
        small_filesystem(size * 5 // 2) / "run"
    )  # step 1 writes two checkpoints; step 2's first does not fit
    with pytest.warns(
        UserWarning, match="free on the filesystem of .*: the next checkpoint will probably not fit"
    ):
        with pytest.raises(SystemExit) as exited:
            main(_fit_args(_recipe(tmp_path, 3), run, "--checkpoint_every_n_steps", "1"))
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"ouro: error: could not write checkpoint {run}/checkpoints/step-00000002.ckpt: No space"
    )
    assert line.endswith("no partial file was left behind; rerun to resume")
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-00000001.ckpt"]
