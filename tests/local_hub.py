"""A stand-in for the Hugging Face Hub on 127.0.0.1 (the `local_hub` fixture in conftest.py points HF_ENDPOINT at it)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: The token the local Hub accepts (a real token's shape, so huggingface_hub's checks pass).
TOKEN = "hf_fakeTokenForTests0123456789abcdef"


class LocalHub:
    """A local HTTP server answering the routes huggingface_hub uses (create_repo, create_branch, preupload, commit,
    file downloads); it keeps what is pushed in memory and records requests the tests check."""

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
