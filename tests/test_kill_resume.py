"""kill -9 during ``ouro fit``, in the middle of a training step and of a checkpoint write: the rerun resumes
from the newest complete checkpoint and ends bit for bit where an uninterrupted run ends.

The kills are injected (``reliability_helpers`` SIGKILLs a subprocess fit at a chosen step or checkpoint write).
"""

from __future__ import annotations

import signal

from reliability_helpers import (
    assert_same_training_state,
    fit_args,
    fit_in_process,
    load_checkpoint,
    ouro_with_fault,
    write_recipe,
)


def test_kill_nine_resumes_bit_for_bit(tmp_path, short_tmp_path):
    """Killed mid-step, then mid-checkpoint-write; the rerun ends exactly where an uninterrupted run ends."""
    recipe = write_recipe(tmp_path, 6)
    reference = tmp_path / "ref"
    fit_in_process(*fit_args(recipe, reference, "--checkpoint_every_n_steps", "2"))

    run, temp = short_tmp_path / "r", short_tmp_path / "systemp"  # the run's temp dir must hold Unix sockets
    temp.mkdir()
    args = fit_args(recipe, run, "--checkpoint_every_n_steps", "2")
    checkpoints = run / "checkpoints"
    # 1. Killed in the middle of step 4's forward pass: step 2's checkpoints are what is left.
    first = ouro_with_fault("kill_at_step:3", args, tmp_path, temp)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2
    # 2. Resumed, then killed while writing step 4's last.ckpt (its step-4 file was written just before).
    second = ouro_with_fault("kill_in_checkpoint:2", args, tmp_path, temp)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "resuming" in second.stderr
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2, "the previous last.ckpt is intact"
    assert load_checkpoint(checkpoints / "step-00000004.ckpt")["global_step"] == 4
    partial = list(checkpoints.glob(".tmp-last.ckpt.*"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < (checkpoints / "last.ckpt").stat().st_size
    assert list(temp.iterdir()) == [], "killed runs leave nothing in the system temp dir"
    # 3. The rerun resumes from the newest complete checkpoint (step 4) and ends where the reference ended.
    fit_in_process(*args)
    assert_same_training_state(
        load_checkpoint(checkpoints / "last.ckpt"), load_checkpoint(reference / "checkpoints" / "last.ckpt")
    )
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["last.ckpt", "step-00000002.ckpt", "step-00000004.ckpt", "step-00000006.ckpt"]
    assert not (run / ".tmp").exists()
    # 4. A truncated last.ckpt (a full disk under another writer): moved aside, step 6 resumed, step 8 reached.
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    fit_in_process(*fit_args(write_recipe(tmp_path, 8), run, "--checkpoint_every_n_steps", "2"))
    assert load_checkpoint(last)["global_step"] == 8
    assert len(list(checkpoints.glob("last.ckpt.unreadable-*"))) == 1
