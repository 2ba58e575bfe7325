"""Safetensors I/O of official-layout weights: ``model.safetensors``, or shards plus an index.

Reading a model from any source (and building it) is `ouro.checkpoints`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch

if TYPE_CHECKING:
    from ouro.model.looped import OuroForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    if (directory / SINGLE_FILE).is_file():
        return safetensors.torch.load_file(directory / SINGLE_FILE)
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(safetensors.torch.load_file(directory / shard))
        return state
    raise FileNotFoundError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def save_model(
    model: OuroForCausalLM,
    directory: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write config.json and safetensors weights; shards plus an index when the weights exceed the limit."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    config = model.config.to_dict()
    config["torch_dtype"] = str(dtype or next(iter(state.values())).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    total = sum(t.numel() * t.element_size() for t in state.values())
    for stale in [
        directory / SINGLE_FILE,
        directory / INDEX_FILE,
        *directory.glob("model-*-of-*.safetensors"),
    ]:
        stale.unlink(missing_ok=True)
    if total <= max_shard_bytes:
        safetensors.torch.save_file(state, directory / SINGLE_FILE, metadata={"format": "pt"})
        return directory
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors.torch.save_file(shard, directory / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory
