"""The built-in data sources: names that ``data.sources`` and ``data.val_source`` accept besides shard folders.

Each one is generated and prepared offline on first use, under ``$OURO_CACHE`` (default ``~/.cache/ouro``), and
serves the formats it lists. Adding one is a module-level function and one `register` call, in the module that
makes the data (the built-in eval suite registers ``builtin-<family>`` in `ouro.eval.suite.training_data`, so
they exist once ``ouro.eval.suite`` is imported, as ``ouro fit`` does):

.. code-block:: python

    def _my_source(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
        return ensure_shards(format, seq_len or 256)  # {"train": folder, "val": folder}

    register(BuiltinSource("my-source", ("sft",), _my_source, "what it holds"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ouro.data.builtin import builtin_dir, builtin_tokenizer_path, write_corpus
from ouro.data.builtin_reasoning import ensure_reasoning_shards
from ouro.data.prepare import prepare
from ouro.errors import DataError, PreparedOtherwiseError

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


def ensure_builtin_corpus(num_workers: int | None = None) -> dict[str, Path]:
    """Prepared shard folders ``{"train": ..., "val": ...}`` of the built-in corpus (built on first use)."""
    directory = builtin_dir()
    tokenizer = builtin_tokenizer_path()
    splits = write_corpus(directory)
    out = {}
    for split, files in splits.items():
        out[split] = directory / "shards" / split
        settings = dict(tokenizer=str(tokenizer), num_workers=num_workers, chunk_tokens=1 << 20)
        try:
            prepare([str(f) for f in files], str(out[split]), **settings)
        except PreparedOtherwiseError:  # shards of another tokenizer or ouro version: ouro's own, rebuilt
            print(
                f"rebuilding the built-in shards {out[split]}: they were prepared from other inputs or settings"
            )
            prepare([str(f) for f in files], str(out[split]), overwrite=True, **settings)
    return out


def _corpus(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
    return ensure_builtin_corpus(workers)


def _reasoning(format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
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
