"""The offline default data: this interpreter's standard library sources and its documentation topics
(``pydoc_data``), plus a small byte-level BPE tokenizer trained on them. Built once under ``$OURO_CACHE`` (default
``~/.cache/ouro``); every machine with Python has it, no network needed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ouro.atomic import atomic_write_text
from ouro.chat import SPECIAL_TOKENS
from ouro.data.cache import cache_dir

#: Vocabulary of the built-in tokenizer (special tokens included): small so a tiny model trains in minutes.
BUILTIN_VOCAB_SIZE = 4096
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_CORPUS_VERSION = 2  # bump when the selection below changes: the cache folder is named after it
_VAL_EVERY = 50  # about 2% of the documents, chosen by a hash of their name, form the validation split
_TRAIN_FILES = 4  # the training split is written as several files so prepare can use several workers


def builtin_dir() -> Path:
    """Folder of the built-in corpus of the running interpreter (one per Python minor version)."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return cache_dir() / "builtin" / f"v{_CORPUS_VERSION}-{version}"


def corpus_documents() -> list[tuple[str, str]]:
    """``(name, text)`` of every standard-library source file and documentation topic.

    Left out: tests, installed packages, and generated data tables (``_sysconfigdata*``, the charmap codecs'
    ``decoding_table``), which are not language and would dominate a small validation split.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_PARTS.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.name.startswith("_sysconfigdata") or "decoding_table = (" in text:
            continue
        if text.strip():
            docs.append((f"stdlib/{path.relative_to(stdlib)}", text))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip the documentation topics
        topics = {}
    docs += [(f"pydoc/{name}", text) for name, text in sorted(topics.items()) if text.strip()]
    return docs


def _is_val(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % _VAL_EVERY == 0


def write_corpus(directory: Path) -> dict[str, list[Path]]:
    """Write the corpus as JSONL (``text`` field): ``train-<i>.jsonl`` files and ``val.jsonl``."""
    corpus = directory / "corpus"
    done = corpus / "DONE"
    splits = {
        "train": [corpus / f"train-{i}.jsonl" for i in range(_TRAIN_FILES)],
        "val": [corpus / "val.jsonl"],
    }
    if done.is_file():
        return splits
    corpus.mkdir(parents=True, exist_ok=True)
    lines: dict[Path, list[str]] = {p: [] for files in splits.values() for p in files}
    train_index = 0
    for name, text in corpus_documents():
        if _is_val(name):
            target = splits["val"][0]
        else:
            target = splits["train"][train_index % _TRAIN_FILES]
            train_index += 1
        lines[target].append(json.dumps({"text": text, "name": name}))
    # Validation documents in a fixed pseudo-random order, so the first batches are not one alphabetical corner.
    val = splits["val"][0]
    lines[val].sort(key=lambda row: hashlib.sha1(row.encode()).hexdigest())
    for path, rows in lines.items():
        atomic_write_text(path, "\n".join(rows) + "\n")
    done.write_text("ok\n")
    return splits


def train_tokenizer(files: list[Path], vocab_size: int = BUILTIN_VOCAB_SIZE):
    """A byte-level BPE tokenizer with ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2."""

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        for path in files:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    yield json.loads(line)["text"]

    tokenizer.train_from_iterator(texts(), trainer=trainer)
    return tokenizer


def builtin_tokenizer_path() -> Path:
    """``tokenizer.json`` of the built-in tokenizer, trained on the corpus's training split on first use."""
    directory = builtin_dir()
    path = directory / "tokenizer.json"
    if not path.is_file():
        splits = write_corpus(directory)
        print(f"training the built-in {BUILTIN_VOCAB_SIZE}-token BPE tokenizer on the standard library ...")
        atomic_write_text(path, train_tokenizer(splits["train"]).to_str())
    return path
