"""``ouro export``: a run, checkpoint or folder -> the official Ouro Hub layout.

The folder holds ``config.json`` (``model_type: ouro``, ``auto_map``), ``model.safetensors`` (or shards and an
index), ``generation_config.json``, tokenizer files with the ChatML template, the remote code
(``configuration_ouro.py``, ``modeling_ouro.py``), ``ouro_provenance.json`` and a model card ``README.md``. It
is written into a temporary sibling folder and renamed at the end, so a failed export never leaves a folder that
looks complete.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import torch

from ouro.atomic import (
    recover_directory,
    remove_stale_temporaries,
    replace_directory,
    temporary_sibling,
)
from ouro.checkpoints import PROVENANCE_FILE, ModelSource, build_model, read_source
from ouro.errors import ExportError, WriteError, describe_write_failure, os_error_behind
from ouro.hub.card import model_card
from ouro.hub.tokenizer_files import resolve_tokenizer_file, write_tokenizer_files

REMOTE_CODE_DIR = Path(__file__).parent / "remote_code"
REMOTE_CODE_FILES = ("configuration_ouro.py", "modeling_ouro.py")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ExportError(
            f"max_shard_size {text!r} is not a size; write e.g. 5GB, 500MB or a number of bytes"
        )
    value, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }[unit]
    return int(value * scale)


def export(
    source: str,
    out_dir: str,
    tokenizer: str | None = None,
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
    max_shard_size: str = "5GB",
    repo_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a trained model in the official Ouro Hub layout (loadable with trust_remote_code=True).

    Args:
        source: A run directory (its last checkpoint), a .ckpt written by `ouro fit`, an exported folder or a Hub repo id.
        out_dir: Folder to create; it must not exist unless --overwrite true.
        tokenizer: tokenizer.json file, folder or Hub repo id; default: the one recorded in the checkpoint or folder.
        dtype: dtype of the saved weights (the official checkpoints use bfloat16).
        max_shard_size: Above this size the weights are split into shards plus model.safetensors.index.json.
        repo_name: Name used in the model card (default: the name of out_dir).
        overwrite: Replace out_dir if it already exists (only after the new export is complete).
    """
    out = Path(out_dir).expanduser().resolve()
    recover_directory(out)  # an export of out_dir interrupted while it swapped folders
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another out_dir or pass --overwrite true")
    return export_source(
        read_source(source),
        out,
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_size=max_shard_size,
        repo_name=repo_name,
        overwrite=overwrite,
        source_name=str(source),
    )


def export_source(
    loaded: ModelSource,
    out_dir: str | Path,
    tokenizer: str | None = None,
    dtype: str = "bfloat16",
    max_shard_size: str | int = "5GB",
    repo_name: str | None = None,
    overwrite: bool = False,
    source_name: str | None = None,
    tokenizer_option: str = "--tokenizer",
) -> Path:
    """`export` for weights already in memory (used by `HubPushCallback`); same arguments as `export`, and
    ``tokenizer_option``: how the caller's user sets ``tokenizer`` (named when none is known)."""
    out = Path(out_dir).expanduser().resolve()
    recover_directory(out)  # an export of out_dir interrupted while it swapped folders
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another out_dir or pass --overwrite true")
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    shard_bytes = parse_size(max_shard_size)
    tokenizer_source = tokenizer or loaded.tokenizer_path
    if tokenizer_source is None:
        raise ExportError(
            f"{source_name or loaded.path} records no tokenizer; set {tokenizer_option} to a "
            "tokenizer.json file, a folder that holds one or a Hub repo id"
        )
    tokenizer_file = resolve_tokenizer_file(tokenizer_source)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, name=out.name)  # what an interrupted export of out_dir left
    tmp = temporary_sibling(out)
    tmp.mkdir()
    try:
        special = write_tokenizer_files(tokenizer_file, tmp, loaded.config.max_position_embeddings)
        config = loaded.config
        changes = {}
        if special["pad_token_id"] is not None and config.pad_token_id is None:
            changes["pad_token_id"] = special["pad_token_id"]
        if special["bos_token_id"] is not None and config.bos_token_id is None:
            changes["bos_token_id"] = special["bos_token_id"]
        config = config.replace(**changes) if changes else config
        model = build_model(loaded, dtype=None, config=config)  # save_pretrained casts to `dtype`
        model.save_pretrained(tmp, dtype=DTYPES[dtype], max_shard_bytes=shard_bytes)
        _write_generation_config(tmp, config, special)
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(REMOTE_CODE_DIR / name, tmp / name)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(loaded.provenance, indent=2) + "\n")
        card = model_card(
            config,
            repo_name or out.name,
            loaded.provenance,
            loaded.tokens_seen,
            source_name or loaded.path,
            sum(t.numel() for t in loaded.state_dict.values()),
            dtype,
        )
        (tmp / "README.md").write_text(card)
        for path in tmp.iterdir():
            path.chmod(0o644)
        replace_directory(tmp, out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = os_error_behind(error)
        if os_error is not None and not isinstance(os_error, FileNotFoundError):
            intact = f"the previous export {out} is intact" if out.exists() else f"{out} was not created"
            needed = sum(t.numel() for t in loaded.state_dict.values()) * DTYPES[dtype].itemsize
            raise WriteError(
                describe_write_failure("export", out, os_error, needed, intact), os_error.errno
            ) from None
        raise
    return out


def _write_generation_config(directory: Path, config, special: dict) -> None:
    eos = [i for i in (special["eos_token_id"], config.eos_token_id) if i is not None]
    eos = list(dict.fromkeys(eos))
    generation = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
        "do_sample": False,
        "transformers_version": _transformers_version(),
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _transformers_version() -> str:
    try:
        return version("transformers")
    except Exception:
        return "4.56.0"
