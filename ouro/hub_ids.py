"""What names a Hugging Face Hub repo (``ORG/NAME``) rather than a local file or folder."""

from __future__ import annotations

from pathlib import Path

#: Endings of local files that a name ORG/NAME may have but a Hub repo id never does.
_FILE_SUFFIXES = (".ckpt", ".json", ".safetensors", ".pt", ".pth", ".yaml", ".yml")


def is_hub_repo_id(source: str | Path) -> bool:
    """True when ``source`` names a Hub repo (``ORG/NAME``) rather than a local file or folder.

    A repo id is not an existing path, has exactly one ``/``, does not start like a path (``.``, ``/``, ``~``),
    does not end like a checkpoint or config file, and its ``ORG`` part is not a local folder (``runs/x`` is a
    run directory that does not exist yet, not a repo).
    """
    text = str(source)
    if not text or Path(text).expanduser().exists():
        return False
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith(_FILE_SUFFIXES):
        return False
    org, name = text.split("/")
    return bool(org and name) and not Path(org).is_dir()
