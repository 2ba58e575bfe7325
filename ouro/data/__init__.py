"""Data: ``ouro prepare`` (raw text -> litdata token shards), pretraining mixtures, SFT conversations, the
built-in offline corpus and tokenizer, and the synthetic reasoning task. Heavy imports happen on first use."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PretrainDataModule": "ouro.data.pretrain",
    "SFTDataModule": "ouro.data.sft",
    "prepare": "ouro.data.prepare",
    "Manifest": "ouro.data.manifest",
    "OuroDataModule": "ouro.data.base",
    "DataConnection": "ouro.data.base",
    "DataError": "ouro.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        # Lazy exports (PEP 562): `import ouro.data` stays light for `ouro prepare`.
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ouro.data' has no attribute {name!r}")
