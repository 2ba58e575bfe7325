"""Stage initialisation: where a stage's weights come from, and the transforms between stages.

A stage either resumes its own run directory (handled by the CLI through ``ckpt_path``) or starts from
``init_from``: a previous stage's run directory or Lightning checkpoint, an exported official-format folder, or a
Hub repo id such as ``ByteDance/Ouro-1.4B``. It takes the weights (and optionally the optimiser state), never the
data-loader state. Architecture changes between stages are read off the two configs: a new loop count, RoPE base
or sequence length needs no weight change; a deeper stack is upcycled by layer duplication.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

from ouro.checkpoints import ModelSource, find_run_checkpoint, is_hub_repo_id, read_source
from ouro.config import OuroConfig

UpcycleMethod = Literal["stack", "interleave"]
#: Config fields that must agree between a source and a stage for weights to transfer.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


class StageInitError(ValueError):
    """The stage cannot be initialised from its ``init_from``; the message says what to run or change."""


# ------------------------------------------------------------------------------------------------- source
def producing_recipe(path: str | Path, recipes_dir: str | Path = "recipes") -> str | None:
    """The recipe whose ``default_root_dir`` is ``path`` (to tell users what to run), if any."""
    target = Path(path).as_posix().rstrip("/")
    for recipe in sorted(Path(recipes_dir).rglob("*.yaml")):
        text = recipe.read_text(errors="ignore")
        match = re.search(r"^\s*default_root_dir:\s*['\"]?([^'\"\s#]+)", text, flags=re.MULTILINE)
        if match and match.group(1).rstrip("/") == target:
            return recipe.as_posix()
    return None


def load_source(source: str | Path) -> ModelSource:
    """Read the weights a stage starts from; a missing source names the recipe that produces it."""
    path = Path(source).expanduser()
    recipe = None if path.exists() else producing_recipe(source)
    if not path.exists() and (recipe or not is_hub_repo_id(source)):
        hint = (
            f"it is produced by {recipe}: run `ouro fit --config {recipe}` (or the pipeline that contains it) "
            "first"
            if recipe
            else "point init_from at a run directory, a .ckpt file, an exported folder or a Hub repo id"
        )
        raise StageInitError(f"init_from {str(source)!r} does not exist; {hint}")
    is_run_dir = path.is_dir() and path.suffix != ".ckpt" and not (path / "config.json").is_file()
    if is_run_dir and find_run_checkpoint(path) is None:
        raise StageInitError(
            f"init_from {str(source)!r} is a folder without checkpoints/*.ckpt or config.json: the "
            "stage that writes it has not saved a checkpoint yet; run or finish it first"
        )
    return read_source(source)


# ----------------------------------------------------------------------------------------------- transforms
def upcycle_layer_map(source_layers: int, target_layers: int, method: UpcycleMethod = "stack") -> list[int]:
    """For each target layer, the source layer it copies.

    ``stack``: the whole block repeated (0..n-1, 0..n-1, ...); ``interleave``: each layer repeated in place
    (0, 0, 1, 1, ...). One pass of a stacked model is close to, not equal to, several passes of the source: the
    final norm that ends every source pass is skipped between the copies.
    """
    if target_layers % source_layers:
        raise StageInitError(
            f"model.num_hidden_layers ({target_layers}) must be a multiple of the source's "
            f"{source_layers} layers to upcycle by duplication"
        )
    factor = target_layers // source_layers
    if method == "stack":
        return [i % source_layers for i in range(target_layers)]
    if method == "interleave":
        return [i // factor for i in range(target_layers)]
    raise StageInitError(f"upcycle must be 'stack' or 'interleave', got {method!r}")


def transfer_state(
    source: ModelSource, target: OuroConfig, upcycle: UpcycleMethod = "stack"
) -> dict[str, torch.Tensor]:
    """The source weights rearranged for ``target``'s layer count; shape fields must agree."""
    for name in SHAPE_FIELDS:
        ours, theirs = getattr(target, name), getattr(source.config, name)
        if ours != theirs:
            raise StageInitError(
                f"model.{name} is {ours} but init_from {source.path} has {theirs}; weights cannot "
                f"transfer — set model.{name}: {theirs} in the recipe"
            )
    layer_map = upcycle_layer_map(source.config.num_hidden_layers, target.num_hidden_layers, upcycle)
    state: dict[str, torch.Tensor] = {}
    pattern = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in source.state_dict.items():
        match = pattern.match(key)
        if match:
            by_layer.setdefault(int(match.group(1)), {})[match.group(2)] = value
        else:
            state[key] = value
    for new_index, old_index in enumerate(layer_map):
        for suffix, value in by_layer[old_index].items():
            state[f"model.layers.{new_index}.{suffix}"] = (
                value.clone() if layer_map.count(old_index) > 1 else value
            )
    return state


def describe_transition(source: OuroConfig, target: OuroConfig) -> list[str]:
    """Human-readable changes between two stages' architectures (logged at stage start)."""
    changes = []
    for name in ("num_hidden_layers", "total_ut_steps", "rope_theta", "max_position_embeddings"):
        before, after = getattr(source, name), getattr(target, name)
        if before != after:
            changes.append(f"{name}: {before} -> {after}")
    return changes
