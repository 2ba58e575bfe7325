"""`ouro push` and `HubPushCallback` against the `local_hub` fixture (a local server standing in for the Hub)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOKEN, ToyDataModule, build_tiny_model, write_fit_checkpoint, write_word_tokenizer

from ouro.checkpoints import load_model
from ouro.config import OuroConfig
from ouro.hub.export import export
from ouro.hub.push import PushError, push


@pytest.fixture()
def exported(tmp_path):
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    ckpt = write_fit_checkpoint(
        tmp_path / "model.ckpt", build_tiny_model(), tokenizer=tokenizer, tokens_seen=10
    )
    return export(str(ckpt), str(tmp_path / "export"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_uploads_the_export(local_hub, exported, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    url = push(str(exported), "org/tiny-ouro", private=True, commit_message="first upload")
    assert local_hub.repos["org/tiny-ouro"]["visibility"] == "private"
    assert local_hub.files[("org/tiny-ouro", "main")] == _snapshot(exported)
    assert local_hub.commits[-1]["header"]["summary"] == "first upload"
    assert url.endswith("a" * 40) and not local_hub.unknown
    assert local_hub.validated and "library_name: transformers" in local_hub.validated[0]
    # Pushing again (repo exists) to a new branch works and the token was sent but never shown.
    push(str(exported), "org/tiny-ouro", revision="dev")
    assert local_hub.files[("org/tiny-ouro", "dev")] == _snapshot(exported)
    assert set(local_hub.auth_headers) == {f"Bearer {TOKEN}"}
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert "org/tiny-ouro" in captured.out


def test_bad_token_gives_one_clear_message_and_keeps_the_export(
    local_hub, exported, monkeypatch, capfd, caplog
):
    caplog.set_level(logging.DEBUG)
    before = _snapshot(exported)
    wrong = "hf_wrongTokenThatMustNotLeak999"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(PushError) as info:
        push(str(exported), "org/tiny-ouro")
    message = str(info.value)
    assert "HTTP 401" in message and "HF_TOKEN" in message and "retry" in message
    assert wrong not in message
    captured = capfd.readouterr()
    assert wrong not in captured.out + captured.err + caplog.text
    assert _snapshot(exported) == before
    # Fixing the token and rerunning the same command succeeds.
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push(str(exported), "org/tiny-ouro")
    assert local_hub.files[("org/tiny-ouro", "main")] == before


def test_network_failure_and_missing_token(exported, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(PushError, match="could not reach the Hub") as info:
        push(str(exported), "org/tiny-ouro")
    assert TOKEN not in str(info.value)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PushError, match="no Hugging Face token"):
        push(str(exported), "org/tiny-ouro")


def test_incomplete_export_is_refused(local_hub, exported):
    (exported / "modeling_ouro.py").unlink()
    with pytest.raises(FileNotFoundError, match="modeling_ouro.py"):
        push(str(exported), "org/tiny-ouro")
    assert not local_hub.repos


def test_callback_exports_and_pushes_at_the_end_of_a_stage(local_hub, tmp_path):
    import lightning as L

    from ouro.hub.callback import HubPushCallback
    from ouro.module import OuroLM

    tok = write_word_tokenizer(tmp_path / "tokenizer.json")
    module = OuroLM(model=OuroConfig.preset("tiny"), loss_chunk_size=64)
    callback = HubPushCallback(repo_id="org/stage-push", tokenizer=str(tok))
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=str(tmp_path / "run"),
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=ToyDataModule(seq_len=16, batch_size=2, train_size=4))
    out = tmp_path / "run" / "export"
    assert callback.exported == out.resolve()
    assert local_hub.files[("org/stage-push", "main")] == _snapshot(out)
    assert module.tokens_seen == 2 * 2 * 16 and "64 tokens" in local_hub.commits[-1]["header"]["summary"]
    trained = load_model(out)[0]
    for key, value in module.net.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value.to(torch.bfloat16).float())


def test_pushed_repo_loads_back_by_repo_id(local_hub, exported, tmp_path):
    """export -> push -> `read_source("org/name")` through the same endpoint (a fresh process, since
    huggingface_hub reads HF_ENDPOINT when it is imported)."""
    push(str(exported), "org/round-trip")
    script = (
        "import sys, torch\n"
        "from ouro.checkpoints import read_source\n"
        "loaded = read_source('org/round-trip')\n"
        "torch.save({'layers': loaded.config.num_hidden_layers, 'state': loaded.state_dict}, sys.argv[1])\n"
    )
    result_file = tmp_path / "loaded.pt"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub_cache"), "HF_HUB_DISABLE_XET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(result_file)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert TOKEN not in done.stdout + done.stderr
    loaded = torch.load(result_file, weights_only=True)
    expected = load_model(exported)[0].state_dict()
    assert loaded["layers"] == 2 and set(loaded["state"]) == set(expected)
    assert all(torch.equal(loaded["state"][k].float(), v) for k, v in expected.items())
    assert "model.safetensors" in local_hub.downloads and "modeling_ouro.py" not in local_hub.downloads
