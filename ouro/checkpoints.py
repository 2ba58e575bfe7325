"""Every place `ouro` keeps a model, read into one record.

Accepted sources, told apart by `read_source`:

* a run directory written by ``ouro fit`` (its checkpoint, see `find_run_checkpoint`);
* a Lightning checkpoint of ``OuroLM``: a ``.ckpt`` file, or a ``.ckpt`` folder of a sharded (FSDP) run;
* an official-format folder (``config.json`` + ``model.safetensors`` or shards), e.g. an ``ouro export``;
* a Hub repo id such as ``ByteDance/Ouro-1.4B`` (downloaded: json and safetensors files only).

`build_model` turns a record into an ``OuroForCausalLM`` after checking its keys; `load_model` does both, and
`load_model_and_tokenizer` also loads the tokenizer the record names (what ``ouro generate`` and ``ouro eval`` use).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from lightning.fabric.utilities.load import _load_distributed_checkpoint
from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

from ouro.config import OuroConfig
from ouro.data.tokenizer import load_tokenizer
from ouro.errors import SourceError, SourceNotFoundError
from ouro.hub_ids import is_hub_repo_id
from ouro.model import OuroForCausalLM
from ouro.model.weights import read_state_dict
from ouro.resume import newest_readable_checkpoint

PROVENANCE_FILE = "ouro_provenance.json"


@dataclass
class ModelSource:
    """A model read from a source: weights plus what the stages before recorded about it."""

    config: OuroConfig
    """Architecture of the model."""
    state_dict: dict[str, torch.Tensor]
    """Official-layout tensors (``model.layers.0.self_attn.q_proj.weight`` ...), as stored."""
    path: str
    """The resolved file or folder that was read (or a description, for weights held in memory)."""
    kind: str = "memory"
    """``checkpoint`` (``.ckpt`` file), ``sharded`` (``.ckpt`` folder), ``folder`` (official layout, local or
    downloaded from the Hub) or ``memory`` (built by the caller)."""
    tokens_seen: int = 0
    """Training tokens recorded with the weights (0 when unknown)."""
    tokenizer_path: str | None = None
    """Where the tokenizer lives (tokenizer.json path, folder or Hub repo id), if recorded."""
    provenance: list[dict[str, Any]] = field(default_factory=list)
    """Stages that produced the weights: dicts with stage, recipe, tokens, metrics."""
    optimizer_states: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """AdamW states of a Lightning checkpoint, one per optimizer (empty for other sources)."""
    final_lr: float | None = None
    """Learning rate the checkpoint's stage ended with, if recorded."""


def find_run_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run directory resumes from: ``checkpoints/last.ckpt``, else the newest ``*.ckpt``; an
    unreadable one is named in one line and skipped (`ouro.resume.newest_readable_checkpoint`)."""
    found = newest_readable_checkpoint(run_dir)
    return None if found is None else found.path


# ----------------------------------------------------------------------------------------------- reading
def read_source(source: str | Path, revision: str | None = None) -> ModelSource:
    """Read any accepted source (see the module docstring); ``revision`` applies to Hub repo ids."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".ckpt":
            raise SourceError(
                f"{path} is a file but not a .ckpt checkpoint; pass a checkpoint, a run directory, "
                "an exported folder or a Hub repo id"
            )
        return read_checkpoint(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return read_folder(path)
        if path.suffix == ".ckpt":
            return read_checkpoint(path)
        found = find_run_checkpoint(path)
        if found is None:
            raise SourceError(
                f"{path} has no checkpoints/*.ckpt and no config.json: the run has not saved a checkpoint "
                "yet; run or finish its stage (`ouro fit --config <recipe>`) first"
            )
        return read_checkpoint(found)
    if not is_hub_repo_id(source):
        raise SourceNotFoundError(
            f"{source} does not exist (expected a .ckpt file, a run directory, an exported folder or "
            "a Hub repo id ORG/NAME)"
        )
    return read_folder(source, revision)


def final_lr_from_checkpoint(checkpoint: Mapping[str, Any]) -> float | None:
    """The LR a stage ended with, read from its Lightning checkpoint dict (for ``init_lr_from_previous``).

    Uses the state of `ouro.callbacks.WarmupStableDecay` (saved under its class name) when present, else the optimizer's first parameter group; None if
    neither.
    """
    state = checkpoint.get("callbacks", {}).get("WarmupStableDecay")
    if isinstance(state, Mapping) and state.get("last_lr") is not None:
        return float(state["last_lr"])
    optimizers = checkpoint.get("optimizer_states") or []
    if optimizers and optimizers[0].get("param_groups"):
        return float(optimizers[0]["param_groups"][0]["lr"])
    return None


def read_checkpoint(path: str | Path) -> ModelSource:
    """A Lightning checkpoint of ``OuroLM`` (keys ``net.*``, metadata under ``checkpoint["ouro"]``)."""
    path = Path(path)
    try:
        checkpoint = (
            _load_sharded(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as error:
        raise SourceError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}); is it a "
            "checkpoint written by `ouro fit`?"
        ) from None
    meta = checkpoint.get("ouro") if isinstance(checkpoint, dict) else None
    if not meta or "config" not in meta:
        raise SourceError(f"{path} is not a checkpoint written by `ouro fit` (it has no 'ouro' section)")
    state = {
        k.removeprefix("net."): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")
    }
    if not state:
        raise SourceError(f"{path} holds no model weights (no 'net.*' keys in its state_dict)")
    return ModelSource(
        config=OuroConfig(**meta["config"]),
        state_dict=state,
        path=str(path),
        kind="sharded" if path.is_dir() else "checkpoint",
        tokens_seen=int(meta.get("tokens_seen", 0)),
        tokenizer_path=meta.get("tokenizer_path"),
        provenance=list(meta.get("provenance") or []),
        optimizer_states=list(checkpoint.get("optimizer_states") or []),
        final_lr=final_lr_from_checkpoint(checkpoint),
    )


def _load_sharded(folder: Path) -> dict[str, Any]:
    """A sharded (FSDP, torch.distributed.checkpoint) Lightning checkpoint folder as one full checkpoint dict."""
    checkpoint = _load_distributed_checkpoint(folder)
    if "model" in checkpoint:  # FSDP1 names the weights "model"; ModelParallelStrategy (FSDP2) "state_dict"
        return _format_checkpoint(checkpoint)
    optimizers = sorted(k for k in checkpoint if k.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in optimizers]
    return checkpoint


def read_folder(path_or_repo: str | Path, revision: str | None = None) -> ModelSource:
    """An official-layout folder (``config.json``, safetensors weights, optional provenance and tokenizer), or
    the snapshot of a Hub repo id."""
    directory = Path(path_or_repo).expanduser()
    if is_hub_repo_id(path_or_repo):
        directory = download(str(path_or_repo), revision)
    elif not directory.exists():
        raise SourceNotFoundError(
            f"{directory} does not exist, and it is not a Hub repo id of the form ORG/NAME"
        )
    elif not directory.is_dir():
        raise SourceError(f"{directory} is a file; expected a folder with config.json and model.safetensors")
    if not (directory / "config.json").is_file():
        raise SourceNotFoundError(f"{directory} has no config.json; is it a folder written by `ouro export`?")
    provenance: list[dict[str, Any]] = []
    if (directory / PROVENANCE_FILE).is_file():
        provenance = json.loads((directory / PROVENANCE_FILE).read_text())
    return ModelSource(
        config=OuroConfig.load(directory),
        state_dict=read_state_dict(directory),
        path=str(directory),
        kind="folder",
        tokens_seen=sum(int(p.get("tokens") or 0) for p in provenance),
        tokenizer_path=str(directory) if (directory / "tokenizer.json").is_file() else None,
        provenance=provenance,
    )


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a Hub repo's json and safetensors files (downloaded when not cached)."""
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as error:  # network, auth, missing repo
        raise SourceError(
            f"could not download {repo_id} from the Hugging Face Hub ({type(error).__name__}: "
            f"{error}); check the repo id, your network and HF_TOKEN, or pass a local folder"
        ) from None


# ---------------------------------------------------------------------------------------------- building
def check_keys(source: ModelSource, model: torch.nn.Module) -> None:
    """Raise `SourceError` unless ``source.state_dict`` has exactly the keys of ``model``."""
    expected, present = set(model.state_dict()), set(source.state_dict)
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        raise SourceError(
            f"the weights of {source.path} do not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (of {len(missing)} missing, {len(unexpected)} unexpected)"
        )


def build_model(
    source: ModelSource,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    config: OuroConfig | None = None,
    model_class: type[OuroForCausalLM] | None = None,
) -> OuroForCausalLM:
    """An ``OuroForCausalLM`` (or ``model_class``) holding the record's weights, cast to ``dtype`` (None keeps
    the stored one). ``config`` replaces the record's (same shapes, e.g. with token ids an export fills in).
    """
    with torch.device("meta"):
        model = (model_class or OuroForCausalLM)(config or source.config)
    check_keys(source, model)
    state = {k: v.to(device=device, dtype=dtype) for k, v in source.state_dict.items()}
    model.load_state_dict(state, assign=True)
    return model


def load_model(
    source: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    revision: str | None = None,
) -> tuple[OuroForCausalLM, ModelSource]:
    """``(model in eval mode, its record)`` from any accepted source; ``dtype`` may be a name (``bfloat16``)."""
    record = read_source(source, revision)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return build_model(record, torch_dtype, device).eval(), record


def load_model_and_tokenizer(
    source: str, tokenizer: str | None = None, dtype: str = "float32", device: str = "cpu"
):
    """``(model in eval mode, tokenizers.Tokenizer)`` from any accepted source; ``tokenizer`` overrides the one
    the source records."""
    model, record = load_model(source, dtype, device)
    tokenizer_source = tokenizer or record.tokenizer_path
    if tokenizer_source is None:
        raise SourceError(
            f"{source} records no tokenizer; pass --tokenizer with a tokenizer.json file, a folder "
            "that holds one or a Hub repo id"
        )
    return model, load_tokenizer(tokenizer_source)
