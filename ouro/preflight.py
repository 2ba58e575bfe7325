"""Checks that run before a fit starts, so a mistake costs one line, not a traceback or a silent wrong run.

* `check_recipe_syntax`: every ``--config`` file parses as YAML (the line and column of the first error,
  instead of LightningCLI's usage dump).
* `check_sequence_fits`: the sequences the stage trains on fit the model's ``max_position_embeddings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ouro.recipe_yaml import RecipeError, read_recipe


def config_files(args: list[str]) -> list[str]:
    """The files given with ``--config FILE`` or ``--config=FILE``."""
    files = []
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            files.append(args[index + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def yaml_syntax_problem(path: Path) -> str | None:
    """``line L, column C: <what is wrong>`` for a recipe that is not valid YAML (``!include`` expanded), else
    None."""
    try:
        read_recipe(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{problem}" + (f" ({context})" if context else "")
    return None


def check_recipe_syntax(args: list[str]) -> None:
    """Raise `RecipeError` naming the file and line of the first ``--config`` file that is not valid YAML."""
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            continue  # LightningCLI reports a missing file (or reads an inline YAML string)
        problem = yaml_syntax_problem(path)
        if problem:
            raise RecipeError(f"recipe {name} is not valid YAML: {problem}")


def check_sequence_fits(max_positions: int, datamodule: Any, callbacks: list[Any]) -> None:
    """Refuse a stage whose sequences are longer than the model's ``max_position_embeddings``.

    The length is the DataModule's ``seq_len`` or, when a callback sets it (``LongContextSchedule(seq_len=)``),
    the callback's.
    """
    lengths = {"data.seq_len": getattr(datamodule, "seq_len", None)}
    for callback in callbacks:
        length = getattr(callback, "seq_len", None)
        if isinstance(length, int):
            lengths[f"{type(callback).__name__}.seq_len"] = length
    for name, length in lengths.items():
        if isinstance(length, int) and length > max_positions:
            raise RecipeError(
                f"{name} is {length} but model.model.max_position_embeddings is {max_positions}: the model "
                f"has no positions past {max_positions}; raise max_position_embeddings to at least {length} "
                f"or lower {name}"
            )
