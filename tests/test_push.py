"""`ouro push` and `HubPushCallback` against a local HTTP server standing in for the Hub (HF_ENDPOINT)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ouro.checkpoints import load_model
from ouro.config import OuroConfig
from ouro.hub.export import export
from ouro.hub.push import PushError, push
from ouro.model import OuroForCausalLM

TOKEN = "hf_fakeTokenForTests0123456789abcdef"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class FakeHub:
    """The routes huggingface_hub uses for create_repo, create_branch, preupload and commit; files are kept."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.repos: dict[str, dict] = {}
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> path -> content
        self.commits: list[dict] = []
        self.unknown: list[str] = []
        self.validated: list[str] = []
        self.downloads: list[str] = []
        self.auth_headers: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization", "")
                hub.auth_headers.append(auth)
                if auth != f"Bearer {hub.token}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:  # the model card's metadata
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:3] == ["api", "repos", "create"]:
                    payload = json.loads(body)
                    repo = f"{payload['organization']}/{payload['name']}"
                    status = 409 if repo in hub.repos else 200
                    hub.repos.setdefault(repo, payload)
                    return self._reply(status, {"url": f"{hub.url}/{repo}", "name": repo})
                if parts[0] == "api" and parts[1] == "models" and len(parts) >= 6:
                    repo, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                    if action == "branch":
                        hub.files.setdefault((repo, revision), {})
                        return self._reply(200, {})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply(
                            200,
                            {
                                "files": [
                                    {
                                        "path": f["path"],
                                        "uploadMode": "regular",
                                        "shouldIgnore": False,
                                        "oid": None,
                                    }
                                    for f in files
                                ]
                            },
                        )
                    if action == "commit":
                        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                        stored = hub.files.setdefault((repo, revision), {})
                        for line in lines:
                            if line["key"] == "file":
                                stored[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        hub.commits.append({"repo": repo, "revision": revision, "header": lines[0]["value"]})
                        return self._reply(
                            200,
                            {
                                "commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}",
                                "commitOid": "a" * 40,
                                "pullRequestUrl": None,
                            },
                        )
                hub.unknown.append(f"POST {self.path}")
                return self._reply(404, {"error": "not found"})

            def _serve(self, with_body: bool) -> None:
                """Just enough of the download API for `snapshot_download` (repo info, file resolve)."""
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo = f"{parts[2]}/{parts[3]}"
                    files = hub.files.get((repo, "main"), {})
                    if files and parts[4] == "revision":
                        return self._reply(
                            200,
                            {
                                "id": repo,
                                "modelId": repo,
                                "sha": "a" * 40,
                                "private": False,
                                "siblings": [{"rfilename": name} for name in sorted(files)],
                            },
                        )
                    if files:
                        return self._reply(
                            200,
                            [
                                {
                                    "type": "file",
                                    "path": name,
                                    "size": len(data),
                                    "oid": hashlib.sha1(data).hexdigest(),
                                }
                                for name, data in sorted(files.items())
                            ],
                        )
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, path = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                    content = hub.files.get((repo, "main"), {}).get(path)
                    if content is not None:
                        hub.downloads.append(path)
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(content)))
                        self.send_header("X-Repo-Commit", "a" * 40)
                        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                        self.end_headers()
                        if with_body:
                            self.wfile.write(content)
                        return None
                hub.unknown.append(f"{self.command} {self.path}")
                return self._reply(404, {"error": "not found"})

            def do_GET(self):  # noqa: N802
                self._serve(with_body=True)

            def do_HEAD(self):  # noqa: N802
                self._serve(with_body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no login cache of the machine
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.close()


def make_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = SPECIALS + ["[UNK]"] + [f"w{i}" for i in range(508)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))
    return path


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    net = OuroForCausalLM(OuroConfig.preset("tiny"))
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "ouro": {
                "config": asdict(net.config),
                "tokens_seen": 10,
                "tokenizer_path": str(make_tokenizer(tmp_path / "tokenizer.json")),
            },
        },
        ckpt,
    )
    return export(str(ckpt), str(tmp_path / "export"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_uploads_the_export(hub, exported, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    url = push(str(exported), "org/tiny-ouro", private=True, commit_message="first upload")
    assert hub.repos["org/tiny-ouro"]["visibility"] == "private"
    assert hub.files[("org/tiny-ouro", "main")] == _snapshot(exported)
    assert hub.commits[-1]["header"]["summary"] == "first upload"
    assert url.endswith("a" * 40) and not hub.unknown
    assert hub.validated and "library_name: transformers" in hub.validated[0]
    # Pushing again (repo exists) to a new branch works and the token was sent but never shown.
    push(str(exported), "org/tiny-ouro", revision="dev")
    assert hub.files[("org/tiny-ouro", "dev")] == _snapshot(exported)
    assert set(hub.auth_headers) == {f"Bearer {TOKEN}"}
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert "org/tiny-ouro" in captured.out


def test_bad_token_gives_one_clear_message_and_keeps_the_export(hub, exported, monkeypatch, capfd, caplog):
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
    assert hub.files[("org/tiny-ouro", "main")] == before


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


def test_incomplete_export_is_refused(hub, exported):
    (exported / "modeling_ouro.py").unlink()
    with pytest.raises(FileNotFoundError, match="modeling_ouro.py"):
        push(str(exported), "org/tiny-ouro")
    assert not hub.repos


def test_callback_exports_and_pushes_at_the_end_of_a_stage(hub, tmp_path):
    import lightning as L

    from ouro.hub.callback import HubPushCallback
    from ouro.module import OuroLM

    tok = make_tokenizer(tmp_path / "tokenizer.json")
    module = OuroLM(model=OuroConfig.preset("tiny"), loss_chunk_size=64)
    ids = torch.randint(3, 512, (4, 17))
    data = [{"input_ids": ids[i, :-1], "labels": ids[i, 1:]} for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    callback = HubPushCallback(repo_id="org/stage-push", tokenizer=str(tok))
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=str(tmp_path / "run"),
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, loader)
    out = tmp_path / "run" / "export"
    assert callback.exported == out.resolve()
    assert hub.files[("org/stage-push", "main")] == _snapshot(out)
    assert module.tokens_seen == 2 * 2 * 16 and "64 tokens" in hub.commits[-1]["header"]["summary"]
    trained = load_model(out)[0]
    for key, value in module.net.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value.to(torch.bfloat16).float())


def test_pushed_repo_loads_back_by_repo_id(hub, exported, tmp_path):
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
    assert "model.safetensors" in hub.downloads and "modeling_ouro.py" not in hub.downloads
