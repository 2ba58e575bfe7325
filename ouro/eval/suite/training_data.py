"""Training shards of a built-in family (data sources ``builtin-binding``, ``builtin-arith``, ``builtin-lookup``,
``builtin-roots``).

Documents of difficulties 1..4, written in curriculum order (train with ``shuffle: false`` to keep it) and
prepared on first use under ``$OURO_CACHE``; none starts with an evaluation question of the suite. Most families
write plain text (``format: pretrain``, the built-in BPE tokenizer); ``roots`` writes text segments whose
answers alone train (``format: sft``, packed for `SFT_SEQ_LEN`), with its own word tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.eval.suite.families import family as suite_family
from ouro.eval.suite.questions import training_documents

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
_VERSION = 1  # bump when the documents change: the cache folder is named after it


def source_name(family: str) -> str:
    """``builtin-<family>``."""
    return f"builtin-{family}"


def _tokenizer_file(root: Path, source) -> Path:
    """The family's word tokenizer, written once under ``root``."""
    from ouro.eval.suite.word_tokenizer import word_tokenizer

    path = root / "tokenizer.json"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, word_tokenizer(source.words()).to_str())
    return path


def ensure_suite_shards(family: str) -> dict[str, Path]:
    """Prepared ``{"train": ..., "val": ...}`` pretrain shard folders of ``family`` (built on first use)."""
    from ouro.data.builtin import builtin_tokenizer_path, cache_dir
    from ouro.data.prepare import prepare

    source = suite_family(family)
    train_documents = TRAIN_DOCUMENTS.get(family, DEFAULT_TRAIN_DOCUMENTS)
    # The folder names the sizes and difficulties, so changing them builds new shards instead of reusing old ones.
    difficulties = [d for d in DIFFICULTIES if d in source.difficulties]
    root = (
        cache_dir()
        / f"suite-v{_VERSION}"
        / f"{family}-{train_documents}-{VAL_DOCUMENTS}-d{max(difficulties)}"
    )
    sft = source.format == "sft"
    tokenizer = _tokenizer_file(root, source) if sft else None
    splits = {
        "train": dict(count=train_documents, curriculum=True, seed=0),
        "val": dict(count=VAL_DOCUMENTS, curriculum=False, seed=1),
    }
    out = {}
    for split, settings in splits.items():
        jsonl = root / f"{split}.jsonl"
        if not jsonl.is_file():
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            documents = training_documents(family, difficulties=difficulties, **settings)
            field = "segments" if sft else "text"
            rows = (json.dumps({field: text, "difficulty": d}) for d, text in documents)
            atomic_write_text(jsonl, "\n".join(rows) + "\n")
        target = root / f"shards-{split}"
        if not (target / "manifest.json").is_file():
            prepare(
                str(jsonl),
                str(target),
                tokenizer=str(tokenizer or builtin_tokenizer_path()),
                format="sft" if sft else "pretrain",
                text_field="segments" if sft else None,
                seq_len=SFT_SEQ_LEN,
                num_workers=1,  # one worker keeps the documents in curriculum order
                chunk_tokens=1 << 16,
            )
        out[split] = target
    return out
