"""Reading a model from every place `ouro` keeps one.

Accepted sources: a Lightning checkpoint written by ``ouro fit`` (``.ckpt``), a run directory (its
``checkpoints/last.ckpt``, else the newest ``*.ckpt``), an official-format folder (``config.json`` +
``model.safetensors``, e.g. an ``ouro export``) or a Hub repo id such as ``ByteDance/Ouro-1.4B``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ouro.config import OuroConfig

PROVENANCE_FILE = "ouro_provenance.json"


class SourceError(ValueError):
    """A model source cannot be read; the message names the path and what to do."""


@dataclass
class ModelSource:
    """Weights and metadata read from a source."""

    config: OuroConfig
    """Architecture of the model."""
    state_dict: dict[str, torch.Tensor]
    """Official-layout tensors (``model.layers.0.self_attn.q_proj.weight`` ...), as stored."""
    path: str
    """The resolved file or folder that was read."""
    kind: str
    """``checkpoint`` (Lightning ``.ckpt``) or ``folder`` (official layout, local or downloaded)."""
    tokens_seen: int = 0
    """Training tokens recorded in the checkpoint (0 when unknown)."""
    tokenizer_path: str | None = None
    """Where the tokenizer lives (tokenizer.json path, folder or Hub repo id), if recorded."""
    provenance: list[dict[str, Any]] = field(default_factory=list)
    """Stages that produced the weights: dicts with stage, recipe, tokens, metrics."""
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)
    """The whole Lightning checkpoint (optimizer and callback states) when the source is a ``.ckpt``."""


def find_run_checkpoint(run_dir: str | Path) -> Path:
    """``checkpoints/last.ckpt`` of a run directory, else its newest ``checkpoints/*.ckpt``."""
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.ckpt"  # a file, or a folder for sharded (FSDP) checkpoints
    if last.exists():
        return last
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not candidates:
        raise SourceError(
            f"{run_dir} has no checkpoints/*.ckpt: the run has not saved a checkpoint yet; run or "
            "finish its stage (`ouro fit --config <recipe>`) first"
        )
    return candidates[-1]


def read_checkpoint(path: str | Path) -> ModelSource:
    """A Lightning checkpoint of ``OuroLM`` (keys ``net.*``, config under ``checkpoint["ouro"]["config"]``)."""
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
    config = OuroConfig(**meta["config"])
    state = {
        k.removeprefix("net."): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")
    }
    if not state:
        raise SourceError(f"{path} holds no model weights (no 'net.*' keys in its state_dict)")
    return ModelSource(
        config=config,
        state_dict=state,
        path=str(path),
        kind="checkpoint",
        tokens_seen=int(meta.get("tokens_seen", 0)),
        tokenizer_path=meta.get("tokenizer_path"),
        provenance=list(meta.get("provenance") or []),
        checkpoint=checkpoint,
    )


def _load_sharded(folder: Path) -> dict[str, Any]:
    """A sharded (FSDP, torch.distributed.checkpoint) Lightning checkpoint folder as one full checkpoint dict."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    checkpoint = _load_distributed_checkpoint(folder)
    if "model" in checkpoint:  # FSDP1 names the weights "model"; ModelParallelStrategy (FSDP2) "state_dict"
        return _format_checkpoint(checkpoint)
    optimizers = sorted(k for k in checkpoint if k.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in optimizers]
    return checkpoint


def read_folder(path_or_repo: str | Path, revision: str | None = None) -> ModelSource:
    """An official-layout folder or a Hub repo id (downloaded: json and safetensors files only)."""
    from ouro.model.weights import read_state_dict, resolve_model_dir

    directory = resolve_model_dir(path_or_repo, revision)
    config = OuroConfig.load(directory)
    provenance: list[dict[str, Any]] = []
    if (directory / PROVENANCE_FILE).is_file():
        provenance = json.loads((directory / PROVENANCE_FILE).read_text())
    tokens = sum(int(p.get("tokens") or 0) for p in provenance)
    tokenizer = str(directory) if (directory / "tokenizer.json").is_file() else None
    return ModelSource(
        config=config,
        state_dict=read_state_dict(directory),
        path=str(directory),
        kind="folder",
        tokens_seen=tokens,
        tokenizer_path=tokenizer,
        provenance=provenance,
    )


def read_source(source: str | Path, revision: str | None = None) -> ModelSource:
    """Read any accepted source (see the module docstring)."""
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
        if path.suffix == ".ckpt":  # a sharded checkpoint folder
            return read_checkpoint(path)
        return read_checkpoint(find_run_checkpoint(path))
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(".ckpt"):
        raise SourceError(
            f"{text} does not exist (expected a .ckpt file, a run directory, an exported folder or "
            "a Hub repo id ORG/NAME)"
        )
    return read_folder(text, revision)


def load_weights_for_init(
    source: str | Path, revision: str | None = None
) -> tuple[OuroConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of an official folder, a Hub repo id, a ``.ckpt`` file or a run directory.

    The state dict uses the official keys (``model.layers.{i}...``, ``lm_head.weight``), ready for
    ``OuroForCausalLM.load_state_dict``; tensors keep their stored dtype.
    """
    loaded = read_source(source, revision)
    return loaded.config, loaded.state_dict
