"""Ouro's cache folder (``$OURO_CACHE``, default ``~/.cache/ouro``) and the paths recorded relative to it.

What ``ouro`` builds there (the built-in corpora, their tokenizers and shards) records the paths of its inputs as
``$OURO_CACHE/<path inside the cache>``, so a cache that is copied to another node, moved, or shared and mounted
at another path stays valid as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

#: How a recorded path inside the cache starts.
CACHE_TOKEN = "$OURO_CACHE"


def cache_dir() -> Path:
    """Root of Ouro's cache, the one place everything cached lives (built-in data, streamed chunks, the
    compile caches of the tool commands): ``$OURO_CACHE``, else ``$XDG_CACHE_HOME/ouro``, else ``~/.cache/ouro``."""
    if os.environ.get("OURO_CACHE"):
        return Path(os.environ["OURO_CACHE"]).expanduser()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ouro").expanduser()


def portable_path(path: str | Path) -> str:
    """``$OURO_CACHE/<relative>`` for a local path inside the cache, else ``path`` as given."""
    text = str(path)
    if "://" in text:
        return text
    try:
        relative = Path(text).resolve().relative_to(cache_dir().resolve())
    except ValueError:
        return text
    return f"{CACHE_TOKEN}/{relative.as_posix()}"


def local_path(recorded: str) -> str:
    """The path a `portable_path` record names under the cache in use now (other records unchanged)."""
    if recorded == CACHE_TOKEN or recorded.startswith(CACHE_TOKEN + "/"):
        return str(cache_dir() / recorded[len(CACHE_TOKEN) :].lstrip("/"))
    return recorded
