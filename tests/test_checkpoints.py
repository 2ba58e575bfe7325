"""`ouro.checkpoints`: telling Hub repo ids from paths, finding a run's checkpoint, one record for every source."""

from __future__ import annotations

import os
import time

import pytest
import torch
from conftest import build_tiny_model, write_fit_checkpoint

from ouro.checkpoints import (
    ModelSource,
    SourceError,
    SourceNotFoundError,
    build_model,
    find_run_checkpoint,
    load_model,
    read_source,
)
from ouro.hub_ids import is_hub_repo_id
from ouro.model import OuroForCausalLM


def tiny_model(seed: int = 0) -> OuroForCausalLM:
    return build_tiny_model(seed, num_hidden_layers=1, total_ut_steps=2)


def write_ckpt(path, model: OuroForCausalLM, lr: float = 1e-3, tokenizer: str | None = None) -> None:
    """What `ouro fit` writes after one stage of 640 tokens, with one AdamW state at learning rate ``lr``."""
    optimizer = {"state": {}, "param_groups": [{"lr": lr, "params": []}]}
    provenance = [{"stage": "a", "tokens": 640}]
    write_fit_checkpoint(
        path, model, tokenizer=tokenizer, tokens_seen=640, provenance=provenance, optimizer_states=[optimizer]
    )


def test_hub_repo_ids_are_told_from_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_repo_id("ByteDance/Ouro-1.4B") and is_hub_repo_id("Qwen/Qwen2.5-0.5B")
    for path in ("./a/b", "/abs/b", "~/x", "a/b/c", "noslash", "runs/x.ckpt", "a/tokenizer.json", "/", "a/"):
        assert not is_hub_repo_id(path), path
    (tmp_path / "runs").mkdir()
    assert not is_hub_repo_id("runs/warmup"), "a run directory under an existing folder is not a repo"
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_repo_id("org/name"), "an existing path is never a repo id"


def test_find_run_checkpoint_prefers_last_then_newest(tmp_path):
    assert find_run_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older, newer = folder / "step-1.ckpt", folder / "step-2.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, older)
    torch.save({"state_dict": {}, "global_step": 2}, newer)
    past = time.time() - 100
    os.utime(older, (past, past))
    assert find_run_checkpoint(tmp_path) == newer
    torch.save({"state_dict": {}, "global_step": 3}, folder / "last.ckpt")
    assert find_run_checkpoint(tmp_path) == folder / "last.ckpt"


def test_checkpoint_and_export_read_into_the_same_record(tmp_path):
    model = tiny_model()
    write_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", model, lr=2e-4, tokenizer="builtin")
    run = read_source(tmp_path / "run")
    assert isinstance(run, ModelSource) and run.kind == "checkpoint"
    assert run.config == model.config and run.tokens_seen == 640 and run.tokenizer_path == "builtin"
    assert run.final_lr == pytest.approx(2e-4) and len(run.optimizer_states) == 1
    assert run.path == str(tmp_path / "run" / "checkpoints" / "last.ckpt")

    model.save_pretrained(tmp_path / "export", dtype=torch.float32)
    folder = read_source(tmp_path / "export")
    assert folder.kind == "folder" and folder.optimizer_states == [] and folder.final_lr is None
    assert folder.config.replace(extra={}) == model.config
    assert set(folder.state_dict) == set(run.state_dict)
    assert all(torch.equal(folder.state_dict[k], v) for k, v in run.state_dict.items())


def test_load_model_builds_the_model_in_dtype_and_eval_mode(tmp_path):
    model = tiny_model(seed=1)
    write_ckpt(tmp_path / "a.ckpt", model)
    loaded, record = load_model(tmp_path / "a.ckpt", "bfloat16")
    assert record.kind == "checkpoint" and not loaded.training
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(torch.bfloat16)), key
    kept = build_model(record, dtype=None)
    assert all(p.dtype == torch.float32 for p in kept.parameters())


def test_build_model_names_missing_and_unexpected_keys():
    model = tiny_model()
    state = dict(model.state_dict())
    del state["lm_head.weight"]
    state["model.layers.5.mlp.up_proj.weight"] = torch.zeros(1)
    with pytest.raises(SourceError, match=r"missing \['lm_head.weight'\].*unexpected \['model.layers.5"):
        build_model(ModelSource(model.config, state, "mem"))


def test_unreadable_sources_fail_with_one_clear_message(tmp_path):
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        read_source(tmp_path / "missing")
    with pytest.raises(SourceError, match="not a .ckpt"):
        (tmp_path / "notes.txt").write_text("x")
        read_source(tmp_path / "notes.txt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SourceError, match="cannot read checkpoint"):
        read_source(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(SourceError, match="no 'ouro' section"):
        read_source(tmp_path / "foreign.ckpt")
