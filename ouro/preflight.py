"""Checks that run before a fit starts, so a mistake costs one line, not a traceback or a silent wrong run.

* `check_recipe_syntax`: every ``--config`` file parses as YAML (the line and column of the first error,
  instead of LightningCLI's usage dump).
* `hold_compile_caches` / `choose_compile_caches`: torch.compile's caches go under the run directory, not the
  system temp dir, and a refused command creates no cache folder (importing torch's compiler creates one at once).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from ouro.errors import RecipeError
from ouro.recipe_yaml import read_recipe


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
    except yaml.MarkedYAMLError as error:  # a syntax error at a known place
        mark, problem = error.problem_mark, error.problem or str(error).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{problem}" + (f" ({error.context})" if error.context else "")
    except yaml.YAMLError as error:
        return str(error).splitlines()[0]
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


#: Cache folders of torch.compile (inductor, triton), under ``RUN/cache/`` unless the user set them.
COMPILE_CACHES = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton"}
#: Set when the cache variables were chosen by ``ouro`` (a pipeline's stages then choose their own).
CACHES_CHOSEN_BY_OURO = "OURO_COMPILE_CACHES_DEFAULTED"


def _user_chose_caches() -> bool:
    chosen_by_ouro = os.environ.get(CACHES_CHOSEN_BY_OURO) == "1"
    return not chosen_by_ouro and any(name in os.environ for name in COMPILE_CACHES)


def hold_compile_caches() -> None:
    """Before torch is imported: point torch.compile's caches at the system temp dir, a folder that exists.

    Importing torch's compiler (Lightning does) creates the inductor cache folder at once (its default is
    ``/tmp/torchinductor_<user>``). Its real place, ``RUN/cache/`` or the user's cache folder, is chosen by
    `choose_compile_caches` only once the arguments are checked, so a refused command creates no folder. Nothing
    compiles in between. A place the user set (``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR``) is kept.
    """
    if _user_chose_caches():
        return
    for name in COMPILE_CACHES:
        os.environ[name] = tempfile.gettempdir()
    os.environ[CACHES_CHOSEN_BY_OURO] = "1"


def choose_compile_caches(base: str | Path) -> None:
    """Point torch.compile's caches at ``base/torchinductor`` and ``base/triton`` (created when something
    compiles), unless the user set ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR``. ``ouro fit`` passes
    ``RUN/cache`` (kept for resumes), the other commands Ouro's cache (`ouro.data.cache.cache_dir`)."""
    if _user_chose_caches():
        return
    for name, folder in COMPILE_CACHES.items():
        os.environ[name] = str(Path(base).absolute() / folder)
    os.environ[CACHES_CHOSEN_BY_OURO] = "1"
