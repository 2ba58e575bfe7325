"""Stage start: where a stage's weights come from, the transforms between stages, and what else a new stage
takes over (`StageStart`: optimizer state, tokenizer check, the model before upcycling).

A stage either resumes its own run directory (handled by the CLI through ``ckpt_path``) or starts from
``init_from``: a previous stage's run directory or Lightning checkpoint, an exported official-format folder, or a
Hub repo id such as ``ByteDance/Ouro-1.4B``. It takes the weights (and optionally the optimiser state), never the
data-loader state. Architecture changes between stages are read off the two configs: a new loop count, RoPE base
or sequence length needs no weight change; a deeper stack is upcycled by layer duplication.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ouro.checkpoints import ModelSource, find_run_checkpoint, is_hub_repo_id, read_source
from ouro.config import OuroConfig
from ouro.errors import StageInitError

if TYPE_CHECKING:
    from ouro.model import OuroForCausalLM

UpcycleMethod = Literal["stack", "interleave"]
#: Config fields that must agree between a source and a stage for weights to transfer.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


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


# ---------------------------------------------------------------------------------------------- stage start
class StageStart:
    """What a new stage takes over from its ``init_from`` (a stage that resumes its own run directory has none).

    Built when the stage is set up: the source's weights, rearranged for this stage's layer count, go into the
    model. The rest waits for the Trainer: `on_fit_start` hands over the optimizer state and refuses data
    tokenized with another tokenizer than the source's. After upcycling, `reference` is the model before
    upcycling, whose validation loss the first validation reports next to the new one.
    """

    def __init__(
        self,
        source: ModelSource,
        init_from: str,
        optimizer_state: dict[str, Any] | None = None,
        reference: OuroForCausalLM | None = None,
    ) -> None:
        self.source = source
        """The record read from ``init_from``."""
        self.init_from = init_from
        """``init_from`` as the recipe wrote it."""
        self.optimizer_state = optimizer_state
        """AdamW state to load into the stage's optimizer (None: start fresh)."""
        self.reference = reference
        """The model before upcycling, until the first validation has reported its loss."""

    @classmethod
    def load(
        cls,
        init_from: str,
        net: OuroForCausalLM,
        upcycle: UpcycleMethod = "stack",
        with_optimizer: bool = False,
        same_objective: bool = True,
    ) -> StageStart:
        """Read ``init_from`` and load its weights into ``net`` (upcycled to ``net``'s layer count).

        ``with_optimizer`` also takes the source's AdamW state, which needs the same layer count and objective
        (``same_objective``: the parameters that train are the same ones).
        """
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

        from ouro.model import OuroForCausalLM

        source = load_source(init_from)
        net.load_state_dict(transfer_state(source, net.config, upcycle), strict=True)
        changes = describe_transition(source.config, net.config)
        rank_zero_info(
            f"ouro: initialised from {source.path} ({source.tokens_seen:,} tokens)"
            + (f"; changes: {', '.join(changes)}" if changes else "")
        )
        upcycled = source.config.num_hidden_layers != net.config.num_hidden_layers
        reference = None
        if upcycled:
            reference = OuroForCausalLM(source.config)
            reference.load_state_dict(source.state_dict)
            reference = reference.eval().requires_grad_(False)
        optimizer_state = None
        if with_optimizer:
            if not source.optimizer_states:
                raise StageInitError(
                    f"init_optimizer_state is true but {source.path} holds no optimizer state; "
                    "set model.init_optimizer_state: false"
                )
            if upcycled or not same_objective:
                raise StageInitError(
                    "init_optimizer_state needs the same layer count and objective as init_from "
                    "(the AdamW moments follow the parameters); set model.init_optimizer_state: false"
                )
            if len(source.optimizer_states) > 1:
                rank_zero_warn(
                    f"{source.path} holds {len(source.optimizer_states)} optimizers; only the first is taken"
                )
            optimizer_state = source.optimizer_states[0]
        return cls(source, init_from, optimizer_state, reference)

    def on_fit_start(self, optimizer: torch.optim.Optimizer, datamodule: Any) -> None:
        """Hand the optimizer state over (once) and check the data's tokenizer against the source's."""
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            self.optimizer_state = None
        self.check_tokenizer(datamodule)

    def check_tokenizer(self, datamodule: Any) -> None:
        """Refuse data tokenized with another tokenizer than the one ``init_from`` was trained with."""
        source = self.source.tokenizer_path
        manifests = getattr(datamodule, "manifests", None) or {}
        if not source or not manifests or not Path(str(source)).exists():
            return
        from ouro.data.tokenizer import load_tokenizer, tokenizer_hash

        expected = tokenizer_hash(load_tokenizer(source))
        for directory, manifest in manifests.items():
            if manifest.tokenizer_hash != expected:
                raise StageInitError(
                    f"data {directory} was tokenized with {manifest.tokenizer!r} (hash "
                    f"{manifest.tokenizer_hash[:12]}) but init_from {self.init_from} was trained with "
                    f"{source} (hash {expected[:12]}); prepare the data with that tokenizer "
                    f"(`ouro prepare ... --tokenizer {source}`)"
                )
