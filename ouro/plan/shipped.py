"""The shipped GPU recipes, as ``ouro fit`` composes them: every stage of the 1.4B branch, and every 2.6B overlay
on top of its 1.4B stage."""

from __future__ import annotations

from pathlib import Path

from ouro.recipe_yaml import read_recipe


def gpu_recipes(recipes_dir: str | Path = "recipes") -> list[list[str]]:
    """``--config`` lists of the recipes under ``recipes_dir`` that train on GPUs."""
    recipes_dir = Path(recipes_dir)
    stacks = []
    for path in sorted(recipes_dir.glob("*.yaml")):
        trainer = (read_recipe(path) or {}).get("trainer") or {}
        if trainer.get("accelerator") != "gpu":
            continue
        stacks.append([str(path)])
        overlay = recipes_dir / "ouro-2.6b" / path.name
        if overlay.is_file():
            stacks.append([str(path), str(overlay)])
    return stacks
