"""The built-in data sources: names that ``data.sources`` and ``data.val_source`` accept besides shard folders.

Each one is generated and prepared offline on first use, under ``$OURO_CACHE`` (default ``~/.cache/ouro``), and
serves the formats it lists. Adding one is a module-level function and one `register` call here:

.. code-block:: python

    def _my_source(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
        from ouro.my_module import ensure_shards  # imported on first use

        return ensure_shards(format, seq_len or 256)  # {"train": folder, "val": folder}

    register(BuiltinSource("my-source", ("sft",), _my_source, "what it holds"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ouro.errors import DataError

#: ``(format, seq_len, workers) -> {"train": folder, "val": folder}``; ``seq_len`` is the packing length SFT
#: shards must have (None: the source's default), ``workers`` the processes that may tokenize (None: all CPUs).
Prepare = Callable[[str, "int | None", "int | None"], dict[str, Path]]


@dataclass(frozen=True)
class BuiltinSource:
    """One built-in source."""

    name: str
    """The name a recipe writes in ``sources`` / ``val_source``."""
    formats: tuple[str, ...]
    """The shard formats it can produce (``pretrain``, ``sft``)."""
    prepare: Prepare
    """Module-level function that builds (once) and returns its train and val shard folders."""
    about: str
    """One line on what it holds (shown when a format is missing)."""


SOURCES: dict[str, BuiltinSource] = {}


def register(source: BuiltinSource) -> BuiltinSource:
    """Make ``source.name`` usable as a data source."""
    SOURCES[source.name] = source
    return source


def is_builtin(name: str | None) -> bool:
    """True when ``name`` is a registered built-in source."""
    return name in SOURCES


def builtin_dirs(
    name: str, format: str, seq_len: int | None = None, workers: int | None = None
) -> dict[str, Path]:
    """``{"train": folder, "val": folder}`` of a built-in source in ``format``, built on first use."""
    source = SOURCES[name]
    if format not in source.formats:
        raise DataError(
            f"the built-in source {name!r} ({source.about}) has no {format!r} data, only "
            f"{', '.join(source.formats)}; give {format} shards from `ouro prepare --format {format}` or "
            f"one of {sorted(n for n, s in SOURCES.items() if format in s.formats)}"
        )
    return source.prepare(format, seq_len, workers)


def _corpus(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
    from ouro.data.builtin import ensure_builtin_corpus

    return ensure_builtin_corpus(workers)


def _reasoning(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
    from ouro.data.builtin_reasoning import ensure_reasoning_shards

    return ensure_reasoning_shards(format, seq_len or 256)


register(
    BuiltinSource("builtin", ("pretrain",), _corpus, "pretraining text: the standard library and its docs")
)
register(
    BuiltinSource(
        "builtin-reasoning",
        ("pretrain", "sft"),
        _reasoning,
        "multi-hop variable-resolution conversations with <think> traces",
    )
)


def _suite_family(family: str, format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
    from ouro.eval.suite.training_data import ensure_suite_shards

    return ensure_suite_shards(family)


for _family, _format in (
    ("binding", "pretrain"),
    ("arith", "pretrain"),
    ("lookup", "pretrain"),
    ("roots", "sft"),
):
    register(  # training data of the built-in eval suite's families
        BuiltinSource(
            f"builtin-{_family}",
            (_format,),
            partial(_suite_family, _family),
            f"{_family} questions of the built-in eval suite, in curriculum order",
        )
    )
