"""Training shards of a built-in family (data sources ``builtin-binding``, ``builtin-arith``, ``builtin-lookup``).

Plain-text documents (``format: pretrain``) of difficulties 1..4, written in curriculum order (train with
``shuffle: false`` to keep it), tokenized with the built-in tokenizer and prepared on first use under
``$OURO_CACHE``. None starts with an evaluation question of the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.eval.suite.questions import training_documents

TRAIN_DOCUMENTS = 24_000
"""Documents in the training split (binding: about 34 tokens each, 0.8M tokens): one pass over them is the
whole curriculum."""
VAL_DOCUMENTS = 400
"""Documents in the validation split (difficulties mixed uniformly)."""
DIFFICULTIES = (1, 2, 3, 4)
"""Difficulties the training documents cover (the suite evaluates further ones too)."""
_VERSION = 1  # bump when the documents change: the cache folder is named after it


def source_name(family: str) -> str:
    """``builtin-<family>``."""
    return f"builtin-{family}"


def ensure_suite_shards(family: str) -> dict[str, Path]:
    """Prepared ``{"train": ..., "val": ...}`` pretrain shard folders of ``family`` (built on first use)."""
    from ouro.data.builtin import builtin_tokenizer_path, cache_dir
    from ouro.data.prepare import prepare

    # The folder names the sizes and difficulties, so changing them builds new shards instead of reusing old ones.
    root = (
        cache_dir()
        / f"suite-v{_VERSION}"
        / f"{family}-{TRAIN_DOCUMENTS}-{VAL_DOCUMENTS}-d{max(DIFFICULTIES)}"
    )
    splits = {
        "train": dict(count=TRAIN_DOCUMENTS, curriculum=True, seed=0),
        "val": dict(count=VAL_DOCUMENTS, curriculum=False, seed=1),
    }
    out = {}
    for split, settings in splits.items():
        jsonl = root / f"{split}.jsonl"
        if not jsonl.is_file():
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            documents = training_documents(family, difficulties=list(DIFFICULTIES), **settings)
            rows = (json.dumps({"text": text, "difficulty": d}) for d, text in documents)
            atomic_write_text(jsonl, "\n".join(rows) + "\n")
        target = root / f"shards-{split}"
        if not (target / "manifest.json").is_file():
            prepare(
                str(jsonl),
                str(target),
                tokenizer=str(builtin_tokenizer_path()),
                format="pretrain",
                num_workers=1,  # one worker keeps the documents in curriculum order
                chunk_tokens=1 << 16,
            )
        out[split] = target
    return out
