"""Training shards of a built-in family (data sources ``builtin-binding``, ``builtin-arith``, ``builtin-lookup``,
``builtin-roots``).

Documents of difficulties 1..4, written in curriculum order (train with ``shuffle: false`` to keep it) and
prepared on first use under ``$OURO_CACHE``; none answers an evaluation question of the suite. Most families
write plain text (``format: pretrain``, the built-in BPE tokenizer); ``roots`` writes text segments whose
answers alone train (``format: sft``, packed for `SFT_SEQ_LEN`), with its own word tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.data.builtin import builtin_tokenizer_path
from ouro.data.builtin_sources import BuiltinSource, register
from ouro.data.cache import cache_dir
from ouro.data.prepare import prepare
from ouro.eval.suite.families import FAMILIES
from ouro.eval.suite.families import family as suite_family
from ouro.eval.suite.questions import training_documents
from ouro.eval.suite.word_tokenizer import word_tokenizer

TRAIN_DOCUMENTS = {"roots": 192_000}
"""Documents in the training split by family, default `DEFAULT_TRAIN_DOCUMENTS`; one pass over them is the
whole curriculum (roots: 59 tokens each with EOS, two per block of 128)."""
DEFAULT_TRAIN_DOCUMENTS = 24_000
"""Training documents of the other families (binding: about 34 tokens each, 0.8M tokens)."""
SFT_SEQ_LEN = 127
"""Packing length of the sft families' shards: two roots documents per block of 128 tokens."""
VAL_DOCUMENTS = 400
"""Documents in the validation split (difficulties mixed uniformly)."""
DIFFICULTIES = (1, 2, 3, 4)
"""Difficulties the training documents cover, where the family has them (the suite evaluates further ones)."""
GENERATOR_FILES = tuple(
    Path(__file__).with_name(name)
    for name in ("families.py", "questions.py", "training_data.py", "word_tokenizer.py")
)
"""The code that writes the documents and the word tokenizer: the shard cache key hashes it."""
SPLITS = {"train": dict(curriculum=True, seed=0), "val": dict(curriculum=False, seed=1)}
"""How each split's documents are drawn (`training_documents` arguments besides the count, `split_count`)."""


def source_name(family: str) -> str:
    """``builtin-<family>``."""
    return f"builtin-{family}"


def _tokenizer_file(root: Path, source) -> Path:
    """The family's word tokenizer, written once under ``root``."""
    path = root / "tokenizer.json"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, word_tokenizer(source.words()).to_str())
    return path


def training_difficulties(family: str) -> list[int]:
    """The difficulties of ``family`` its training documents cover (`DIFFICULTIES` where it has them)."""
    return [d for d in DIFFICULTIES if d in suite_family(family).difficulties]


def split_documents(family: str, split: str) -> list[tuple[int, str | list[dict]]]:
    """The ``(difficulty, document)`` pairs of one split (``train`` or ``val``) of ``family``'s shards."""
    return training_documents(
        family, split_count(family, split), difficulties=training_difficulties(family), **SPLITS[split]
    )


def split_count(family: str, split: str) -> int:
    """Documents in one split of ``family``'s shards."""
    return TRAIN_DOCUMENTS.get(family, DEFAULT_TRAIN_DOCUMENTS) if split == "train" else VAL_DOCUMENTS


def shard_key(family: str, tokenizer: Path | None = None) -> str:
    """The cache key of ``family``'s shards: a hash of everything their content follows from: the generator's
    code (`GENERATOR_FILES`), the family's fields, the split settings, the packing length and the tokenizer
    file (the built-in BPE one for plain-text families). Any change to them builds new shards."""
    digest = hashlib.sha256()
    for path in GENERATOR_FILES:
        digest.update(path.read_bytes())
    settings = {
        "family": repr(suite_family(family)),
        "splits": {split: {**drawn, "count": split_count(family, split)} for split, drawn in SPLITS.items()},
        "difficulties": training_difficulties(family),
        "seq_len": SFT_SEQ_LEN,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    if tokenizer is not None:
        digest.update(tokenizer.read_bytes())
    return digest.hexdigest()[:16]


def ensure_suite_shards(family: str) -> dict[str, Path]:
    """Prepared ``{"train": ..., "val": ...}`` pretrain shard folders of ``family`` (built on first use, in a
    folder named after `shard_key`)."""
    source = suite_family(family)
    sft = source.format == "sft"
    text_tokenizer = None if sft else builtin_tokenizer_path()
    root = cache_dir() / "suite" / f"{family}-{shard_key(family, text_tokenizer)}"
    tokenizer = _tokenizer_file(root, source) if sft else text_tokenizer
    out = {}
    for split in SPLITS:
        jsonl = root / f"{split}.jsonl"
        if not jsonl.is_file():
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            documents = split_documents(family, split)
            field = "segments" if sft else "text"
            rows = (json.dumps({field: text, "difficulty": d}) for d, text in documents)
            atomic_write_text(jsonl, "\n".join(rows) + "\n")
        target = root / f"shards-{split}"
        if not (target / "manifest.json").is_file():
            prepare(
                str(jsonl),
                str(target),
                tokenizer=str(tokenizer),
                format="sft" if sft else "pretrain",
                text_field="segments" if sft else None,
                seq_len=SFT_SEQ_LEN,
                num_workers=1,  # one worker keeps the documents in curriculum order
                chunk_tokens=1 << 16,
            )
        out[split] = target
    return out


def _prepare_family(family: str, format: str, seq_len: int | None, workers: int | None) -> dict[str, Path]:
    return ensure_suite_shards(family)


for _name, _family in FAMILIES.items():
    register(  # the training data of every family is a built-in data source
        BuiltinSource(
            source_name(_name),
            (_family.format,),
            partial(_prepare_family, _name),
            f"{_name} questions of the built-in eval suite, in curriculum order",
        )
    )
