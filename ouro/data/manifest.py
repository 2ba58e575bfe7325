"""``manifest.json``: what a prepared shard folder holds and how it was made; checked before training."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.data import remote
from ouro.errors import DataError

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    """Written last by ``ouro prepare``: a folder with a manifest is complete."""

    format: str
    """``pretrain`` (token ids) or ``sft`` (token id * 2 + 1 where the token is trained, packed blocks)."""
    tokenizer: str
    """Name or path the tokenizer was given as."""
    tokenizer_hash: str
    """SHA-256 of the tokenizer's canonical JSON."""
    vocab_size: int
    """Tokenizer vocabulary size (with special tokens)."""
    eos_token_id: int
    """End-of-document token; every document (conversation) ends with it."""
    documents: int
    """Documents (or conversations) written."""
    tokens: int
    """Tokens written (with the EOS after every document; SFT: with padding)."""
    skipped: int = 0
    """Bad records skipped under ``skip_bad``."""
    sources: list[str] = field(default_factory=list)
    """Input files (or Hub data sets) read."""
    block_size: int | None = None
    """SFT only: the packed block length (``seq_len + 1``) the shards were cut for."""
    truncated: int = 0
    """SFT only: conversations longer than a block, cut to fit."""
    text_field: str = "text"
    """JSONL / parquet field read (``messages`` for SFT)."""
    token_dtype: str = "int32"
    """Integer type of the stored values: ``uint16`` when they fit (vocabulary <= 65,536; SFT: <= 32,768),
    else ``int32`` (the only type of version-1 manifests). The loader hands the model int64 either way."""
    chunk_tokens: int | None = None
    """Tokens per chunk file (the last chunk of each unit of input files is shorter)."""
    version: int = 2
    """Manifest format version (1: int32 shards written by litdata's optimize)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, directory: str | Path) -> Path:
        return atomic_write_text(Path(directory) / MANIFEST, self.to_json())

    @classmethod
    def from_text(cls, text: str, where: str) -> Manifest:
        try:
            return cls(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as err:
            raise DataError(
                f"{where} is unreadable ({err}); rerun `ouro prepare` with --overwrite true"
            ) from None

    @classmethod
    def load(cls, directory: str | Path, scratch: str | Path | None = None) -> Manifest:
        """Read the manifest of a local folder or of an object-storage URL (fetched through ``scratch``)."""
        if remote.is_remote(directory):
            text = remote.read_text(
                str(directory), MANIFEST, Path(scratch or remote.cache_dir(str(directory)))
            )
            if text is None:
                remote.check_bucket(str(directory))
        else:
            path = Path(directory) / MANIFEST
            text = path.read_text() if path.is_file() else None
        if text is None:
            raise DataError(
                f"{directory} holds no {MANIFEST}: it is not a prepared shard folder, or its "
                "`ouro prepare` did not finish; run `ouro prepare` for it (again)"
            )
        return cls.from_text(text, f"{directory}/{MANIFEST}")

    def check_model(self, vocab_size: int, eos_token_id: int | None, where: str) -> None:
        """Refuse shards whose tokenizer does not fit the model.

        The model's vocabulary may exceed the tokenizer's by padding (< 128 rows); a larger gap, a smaller model
        vocabulary or another EOS id means another tokenizer.
        """
        if self.vocab_size > vocab_size:
            raise DataError(
                f"{where} was tokenized with {self.tokenizer!r} (vocabulary {self.vocab_size}) but the model's "
                f"vocab_size is {vocab_size}: token ids would overflow the embedding. Set model.vocab_size to "
                f"{self.vocab_size} or prepare the data with the model's tokenizer"
            )
        if vocab_size - self.vocab_size >= 128 or (
            eos_token_id is not None and eos_token_id != self.eos_token_id
        ):
            raise DataError(
                f"{where} was tokenized with {self.tokenizer!r} (vocabulary {self.vocab_size}, EOS id "
                f"{self.eos_token_id}) but the model has vocab_size {vocab_size} and eos_token_id {eos_token_id}: "
                "the tokenizers differ. Prepare the data with the model's tokenizer, or set model.vocab_size / "
                "model.eos_token_id to match"
            )


def check_same_tokenizer(manifests: dict[str, Manifest]) -> Manifest:
    """All sources of a mixture must share one tokenizer; returns the first manifest."""
    items = list(manifests.items())
    first_dir, first = items[0]
    for directory, other in items[1:]:
        if other.tokenizer_hash != first.tokenizer_hash:
            raise DataError(
                f"{directory} was tokenized with {other.tokenizer!r} but {first_dir} with "
                f"{first.tokenizer!r}; prepare every source with the same tokenizer"
            )
    return first
