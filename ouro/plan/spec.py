"""`PlanSpec`: what a plan needs to know about a training run, read from recipe files or from a built fit."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import Strategy, StrategyRegistry

from ouro.errors import RecipeError
from ouro.recipe_yaml import read_recipe


@dataclass
class PlanSpec:
    """One stage's training step as a plan rebuilds it.

    ``module`` holds `ouro.module.OuroLM`'s arguments (the recipe's ``model:`` section), ``strategy`` the
    Lightning strategy the recipe names (it is read, never set up), ``precision`` the Trainer's precision.
    """

    module: dict[str, Any]
    strategy: Strategy | None
    precision: str
    world_size: int
    micro_batch: int
    seq_len: int
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    max_tokens: int | None = None
    name: str = "recipe"
    sources: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step (micro-batch x sequence x world size x accumulation)."""
        return self.micro_batch * self.seq_len * self.world_size * self.accumulate_grad_batches


def merge(base: Any, override: Any) -> Any:
    """``override`` over ``base`` as ``--config`` files compose: mappings merge key by key, anything else (lists
    included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value) if key in base else value
        return merged
    return override


def build_strategy(value: Any) -> Strategy | None:
    """The strategy object a recipe's ``trainer.strategy`` names: a registered name (``ddp``) or a
    ``class_path`` / ``init_args`` block. ``None`` or ``auto``: a single process without a wrapper."""
    if value in (None, "auto", "single_device"):
        return None
    if isinstance(value, str):
        if value not in StrategyRegistry:
            raise RecipeError(f"trainer.strategy {value!r} is not a Lightning strategy name")
        return StrategyRegistry.get(value)
    if isinstance(value, dict) and "class_path" in value:
        module_name, _, class_name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise RecipeError(f"trainer.strategy.class_path {value['class_path']!r}: {error}") from None
        return cls(**(value.get("init_args") or {}))
    raise RecipeError(f"trainer.strategy must be a name or a class_path block, got {value!r}")


def _callback_args(callbacks: Any, class_name: str) -> dict[str, Any] | None:
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(class_name):
            return callback.get("init_args") or {}
    return None


def spec_from_recipes(configs: list[str | Path], world_size: int | None = None) -> PlanSpec:
    """The `PlanSpec` of ``ouro fit --config A --config B ...`` (later files win)."""
    if not configs:
        raise RecipeError("ouro plan needs at least one --config RECIPE")
    recipe: dict[str, Any] = {}
    for config in configs:
        if not Path(config).is_file():
            raise RecipeError(f"recipe {config} does not exist")
        recipe = merge(recipe, read_recipe(config) or {})
    trainer = recipe.get("trainer") or {}
    data = recipe.get("data") or {}
    data_args = data.get("init_args", data) if isinstance(data, dict) else {}
    if "seq_len" not in data_args or "batch_size" not in data_args:
        raise RecipeError(f"{configs[-1]}: data.init_args needs seq_len and batch_size for a plan")
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int):
        raise RecipeError(f"trainer.devices must be a number of devices for a plan, got {devices!r}")
    recipe_world = devices * int(trainer.get("num_nodes", 1))
    budget = _callback_args(trainer.get("callbacks") or [], "TokenBudget")
    return PlanSpec(
        module=dict(recipe.get("model") or {}),
        strategy=build_strategy(trainer.get("strategy")),
        precision=str(trainer.get("precision", "32-true")),
        world_size=world_size or recipe_world,
        micro_batch=int(data_args["batch_size"]),
        seq_len=int(data_args["seq_len"]),
        accumulate_grad_batches=int(trainer.get("accumulate_grad_batches", 1)),
        gradient_clip_val=trainer.get("gradient_clip_val"),
        max_tokens=int(budget["max_tokens"]) if budget and "max_tokens" in budget else None,
        name=str(trainer.get("default_root_dir") or Path(configs[-1]).stem),
        sources=[str(c) for c in configs],
    )


def spec_from_fit(trainer: Any, module: Any, datamodule: Any) -> PlanSpec | None:
    """The `PlanSpec` of a fit that is about to start (its Trainer, `OuroLM` and DataModule, as built from the
    recipe); None when the DataModule does not say its ``batch_size`` and ``seq_len``."""
    micro_batch, seq_len = getattr(datamodule, "batch_size", None), getattr(datamodule, "seq_len", None)
    if not isinstance(micro_batch, int) or not isinstance(seq_len, int):
        return None
    return PlanSpec(
        module=dict(module.hparams),
        strategy=trainer.strategy,
        precision=str(trainer.precision),
        world_size=trainer.num_nodes * trainer.num_devices,
        micro_batch=micro_batch,
        seq_len=seq_len,
        accumulate_grad_batches=int(trainer.accumulate_grad_batches),
        gradient_clip_val=trainer.gradient_clip_val,
        name=str(trainer.default_root_dir),
    )
