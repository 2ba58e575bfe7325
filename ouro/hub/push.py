"""``ouro push``: upload an exported folder to the Hugging Face Hub.

The token comes from where huggingface_hub looks (``HF_TOKEN``, then the login cache of ``hf auth login``); it
is never printed or logged. ``HF_ENDPOINT`` selects another Hub endpoint. Nothing local is changed, so a failed
push is retried by running the same command again (unchanged files are skipped by the Hub).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from ouro.errors import PushError

REQUIRED_FILES = ("config.json", "configuration_ouro.py", "modeling_ouro.py", "tokenizer.json")


def check_export(folder: Path) -> None:
    """Raise unless ``folder`` is a complete ``ouro export``."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist; write it with `ouro export RUN_OR_CHECKPOINT {folder}`"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete export (missing {', '.join(missing)}); rerun "
            f"`ouro export RUN_OR_CHECKPOINT {folder} --overwrite true`"
        )


def push(
    out_dir: str,
    repo_id: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an exported folder to the Hugging Face Hub (creating the repo if needed).

    Args:
        out_dir: A folder written by `ouro export`.
        repo_id: Target repository, ORG/NAME (or NAME under your user).
        private: Create the repository as private (an existing repository keeps its visibility).
        revision: Branch to commit to (created from main if missing); default main.
        commit_message: Commit message; default "Upload Ouro model with ouro export".
    """

    if not repo_id:
        raise ValueError("pass --repo_id ORG/NAME: the Hub repository to push to")
    folder = Path(out_dir).expanduser()
    check_export(folder)
    retry = f"the export in {folder} is unchanged; rerun `ouro push {folder} --repo_id {repo_id}` to retry"
    if get_token() is None:
        raise PushError(f"no Hugging Face token found: set HF_TOKEN or run `hf auth login`; {retry}")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main"):
            api.create_branch(url.repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=url.repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload Ouro model with ouro export",
            ignore_patterns=[".*", "**/.*"],
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PushError(
                f"the Hub refused the upload to {repo_id} (HTTP {status}): the token is missing, invalid "
                f"or lacks write access to this repo; set HF_TOKEN or run `hf auth login`; {retry}"
            ) from None
        raise PushError(
            f"the Hub rejected the upload to {repo_id} (HTTP {status}: {_first_line(error)}); {retry}"
        ) from None
    except (OSError, ConnectionError, TimeoutError) as error:
        raise PushError(
            f"could not reach the Hub at {endpoint or 'https://huggingface.co'} "
            f"({type(error).__name__}); check your network; {retry}"
        ) from None
    except Exception as error:
        if type(error).__module__.startswith("httpx"):  # transport errors of huggingface_hub's HTTP client
            raise PushError(
                f"could not reach the Hub at {endpoint or 'https://huggingface.co'} "
                f"({type(error).__name__}); check your network; {retry}"
            ) from None
        raise
    print(f"pushed {folder} to {url} ({revision or 'main'}): {info.commit_url}")
    return info.commit_url


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
