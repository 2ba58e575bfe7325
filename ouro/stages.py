"""Stage start: where a stage's weights come from, the transforms between stages, and what else a new stage
takes over (`StageStart`: optimizer state, the model before upcycling), and what a stage is (`StageInfo`: name,
provenance, the hand-over to the data through `ouro.data.OuroDataModule.connect`).

A stage either resumes its own run directory (handled by the CLI through ``ckpt_path``) or starts from
``init_from``: a previous stage's run directory or Lightning checkpoint, an exported official-format folder, or a
Hub repo id such as ``ByteDance/Ouro-1.4B``. It takes the weights (and optionally the optimiser state), never the
data-loader state. Architecture changes between stages are read off the two configs: a new loop count, RoPE base
or sequence length needs no weight change; a deeper stack is upcycled by layer duplication.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningDataModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ouro.checkpoints import ModelSource, find_run_checkpoint, read_source
from ouro.config import OuroConfig
from ouro.cross_entropy import IGNORE_INDEX, per_step_cross_entropy
from ouro.data.base import DataConnection, OuroDataModule
from ouro.errors import StageInitError
from ouro.hub_ids import is_hub_repo_id
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
    target_fields, source_fields = asdict(target), asdict(source.config)
    for name in SHAPE_FIELDS:
        ours, theirs = target_fields[name], source_fields[name]
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
    changes, source_fields, target_fields = [], asdict(source), asdict(target)
    for name in ("num_hidden_layers", "total_ut_steps", "rope_theta", "max_position_embeddings"):
        before, after = source_fields[name], target_fields[name]
        if before != after:
            changes.append(f"{name}: {before} -> {after}")
    return changes


# ---------------------------------------------------------------------------------------------- stage start
class StageStart:
    """What a new stage takes over from its ``init_from`` (a stage that resumes its own run directory has none).

    Built when the stage is set up: the source's weights, rearranged for this stage's layer count, go into the
    model. The optimizer state waits for the Trainer (`hand_over_optimizer_state`); the source's tokenizer goes
    to the data through `StageInfo.connect`, which refuses data tokenized with another one. After upcycling, `reference` is the model before
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

    def hand_over_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Load the source's AdamW state into the stage's optimizer (once; nothing when it was not taken)."""
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            self.optimizer_state = None

    def reference_cross_entropy(self, batch: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor | None:
        """Mean last-step cross-entropy of the model before upcycling on a validation batch (None: no reference
        left, because there was no upcycling or the first validation has reported it)."""
        if self.reference is None:
            return None
        device = batch["input_ids"].device
        reference = self.reference.to(device)
        out = reference(batch["input_ids"], doc_ids=batch.get("doc_ids"))
        targets = batch["labels"].reshape(-1)
        hidden = out.hidden_states[-1].reshape(-1, out.hidden_states[-1].shape[-1])
        ce = per_step_cross_entropy([hidden], reference.lm_head.weight, targets, chunk_size)[:, 0]
        return ce[targets != IGNORE_INDEX].mean()

    def report_reference(self, values: dict[str, torch.Tensor], sanity_checking: bool) -> None:
        """Log the last-step validation loss next to the reference's, then drop the reference (after a real
        validation, not the sanity check)."""
        if "upcycle_source_ce_last" not in values:
            return
        last = max(int(n.removeprefix("ce_step")) for n in values if n.startswith("ce_step"))
        rank_zero_info(
            f"ouro: after upcycling, last-step validation CE {float(values[f'ce_step{last}']):.4f} "
            f"(model before upcycling: {float(values['upcycle_source_ce_last']):.4f})"
        )
        if not sanity_checking:
            self.reference = None


# ---------------------------------------------------------------------------------------------- stage info
@dataclass
class StageInfo:
    """What a stage is and where it came from: set by the CLI and at stage start, read by the callbacks, and
    recorded in every checkpoint (and from there in exports and model cards)."""

    name: str | None = None
    """The stage's name (its run directory's name)."""
    recipe: str | None = None
    """The recipe files the stage was started with."""
    resuming: bool = False
    """True when this fit resumes its own run directory (then ``init_from`` is not applied)."""
    previous_final_lr: float | None = None
    """Learning rate the ``init_from`` checkpoint ended with (annealing stages may start from it)."""
    provenance: list[dict[str, Any]] = field(default_factory=list)
    """The records of the stages before this one."""
    tokenizer_path: str | None = None
    """The ``tokenizer.json`` of the stage's data (or of ``init_from`` until the data is set up)."""
    start: StageStart | None = None
    """What this stage took over from ``init_from``; None when resuming or starting fresh."""

    def begin(self, start: StageStart) -> None:
        """Record what the stage took over from ``init_from`` (`StageStart.load`)."""
        self.start = start
        self.previous_final_lr = start.source.final_lr
        self.provenance = list(start.source.provenance)
        self.tokenizer_path = self.tokenizer_path or start.source.tokenizer_path

    def data_connection(self, config: OuroConfig) -> DataConnection:
        """What the stage's data needs from the model (``config``) and from this stage."""
        source = self.start.source.tokenizer_path if self.start is not None else None
        return DataConnection(
            vocab_size=config.vocab_size,
            eos_token_id=config.eos_token_id,
            source_tokenizer=str(source) if source else None,
            init_from=self.start.init_from if self.start is not None else None,
            stage=self.name,
        )

    def connect(self, datamodule: LightningDataModule | None, config: OuroConfig) -> None:
        """Hand the data what it needs (`OuroDataModule.connect`) and take its tokenizer.

        Data that is not an `OuroDataModule` cannot be checked against ``init_from``'s tokenizer: with a
        recorded tokenizer, that is refused in one line.
        """
        if isinstance(datamodule, OuroDataModule):
            datamodule.connect(self.data_connection(config))
            return
        source = self.start.source.tokenizer_path if self.start is not None else None
        if source:
            raise StageInitError(
                f"init_from {self.start.init_from} was trained with tokenizer {source}, but the data "
                f"({type(datamodule).__name__}) is not an ouro DataModule that can be checked against it; "
                "use ouro.data.PretrainDataModule / SFTDataModule or subclass ouro.data.OuroDataModule"
            )

    def fit_start(self, trainer: Trainer) -> None:
        """When the Trainer has set up the optimizer and the data: hand ``init_from``'s AdamW state (if taken) to
        the optimizer, and let the tokenizer of the set-up data replace the one recorded by ``init_from``."""
        if self.start is not None:
            self.start.hand_over_optimizer_state(trainer.optimizers[0])
        datamodule = trainer.datamodule
        if isinstance(datamodule, OuroDataModule) and datamodule.tokenizer_path:
            self.tokenizer_path = str(datamodule.tokenizer_path)
        elif self.tokenizer_path is not None:
            self.tokenizer_path = str(self.tokenizer_path)

    # ------------------------------------------------------------------------------ the upcycle reference
    def reference_cross_entropy(self, batch: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor | None:
        """After upcycling, the model before it on a validation batch (`StageStart.reference_cross_entropy`);
        None when the stage did not upcycle or the first validation has reported it."""
        return None if self.start is None else self.start.reference_cross_entropy(batch, chunk_size)

    def report_reference(self, values: dict[str, torch.Tensor], sanity_checking: bool) -> None:
        """Log the validation loss next to the reference's (`StageStart.report_reference`)."""
        if self.start is not None:
            self.start.report_reference(values, sanity_checking)

    # ----------------------------------------------------------------------------------------- provenance
    def record(
        self, tokens: int, objective: str, config: OuroConfig, metrics: Mapping[str, torch.Tensor]
    ) -> dict[str, Any]:
        """This stage's provenance entry: name, recipe, tokens, architecture and the latest validation metrics
        (the scalar ``val/`` entries of ``metrics``, the Trainer's ``callback_metrics``)."""
        return {
            "stage": self.name,
            "recipe": self.recipe,
            "tokens": int(tokens),
            "objective": objective,
            "total_ut_steps": config.total_ut_steps,
            "num_hidden_layers": config.num_hidden_layers,
            "rope_theta": config.rope_theta,
            "metrics": {
                k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val/") and v.numel() == 1
            },
        }

    def checkpoint_meta(
        self, tokens: int, objective: str, config: OuroConfig, metrics: Mapping[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The ``ouro`` section of a checkpoint (what `ouro.checkpoints.read_source` reads back): this stage's
        `record` appended to the provenance of the stages before it."""
        return {
            "tokens_seen": int(tokens),
            "config": asdict(config),
            "provenance": [*self.provenance, self.record(tokens, objective, config, metrics)],
            "previous_provenance": list(self.provenance),
            "tokenizer_path": self.tokenizer_path,
        }

    def restore(self, meta: dict[str, Any]) -> int:
        """Take the provenance and tokenizer of a resumed checkpoint's ``ouro`` section; returns its tokens."""
        self.provenance = list(meta.get("previous_provenance", []))
        self.tokenizer_path = meta.get("tokenizer_path") or self.tokenizer_path
        return int(meta.get("tokens_seen", 0))
