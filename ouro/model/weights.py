"""Reading and writing official-layout checkpoints (config.json + safetensors, optionally sharded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ouro.config import OuroConfig

if TYPE_CHECKING:
    from ouro.model.looped import OuroForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def resolve_model_dir(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; anything else is treated as a Hub repo id and downloaded (config + weights)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(
                f"{path} is a file; expected a folder with config.json and model.safetensors"
            )
        return path
    text = str(path_or_repo)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"{text} does not exist, and it is not a Hub repo id of the form ORG/NAME")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as error:  # network, auth, missing repo
        raise RuntimeError(
            f"could not download {text} from the Hugging Face Hub ({type(error).__name__}: "
            f"{error}); check the repo id, your network and HF_TOKEN, or pass a local folder"
        ) from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    from safetensors.torch import load_file

    if (directory / SINGLE_FILE).is_file():
        return load_file(directory / SINGLE_FILE)
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(directory / shard))
        return state
    raise FileNotFoundError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_model(
    cls: type[OuroForCausalLM],
    path_or_repo: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    revision: str | None = None,
) -> OuroForCausalLM:
    directory = resolve_model_dir(path_or_repo, revision)
    config = OuroConfig.load(directory)
    state = read_state_dict(directory)
    with torch.device("meta"):
        model = cls(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{directory} does not match its config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (of {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model


def save_model(
    model: OuroForCausalLM,
    directory: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write config.json and safetensors weights; shards plus an index when the weights exceed the limit."""
    from safetensors.torch import save_file

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
        save_file(state, directory / SINGLE_FILE, metadata={"format": "pt"})
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
        save_file(shard, directory / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory
