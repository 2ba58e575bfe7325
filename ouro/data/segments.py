"""Completion-only SFT records without a chat template: a list of text segments, each trained or not.

A record's field (``--text_field segments``) holds ``[{"text": "...", "train": false}, {"text": " 7", "train":
true}, ...]``. Each segment is tokenized on its own, without special tokens, and the pieces are concatenated;
the tokens of ``train: true`` segments are the only ones the loss counts. This is the format for data whose
prompts are not conversations (the built-in ``roots`` task asks a dozen questions per document this way).
"""

from __future__ import annotations

from typing import Any

from ouro.errors import DataError


def is_segments(value: Any) -> bool:
    """True when a record looks like segments (a list of objects with ``text``) rather than chat messages."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "text" in value[0]


def validate_segments(value: Any, where: str) -> list[tuple[str, bool]]:
    """``(text, trained)`` pairs of one record, or `DataError` naming ``where`` and what is wrong."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: segments must be a non-empty list of {{text, train}} objects")
    out = []
    for i, segment in enumerate(value):
        if not isinstance(segment, dict) or not isinstance(segment.get("text"), str):
            raise DataError(f"{where}: segment {i} needs a 'text' string")
        if not isinstance(segment.get("train"), bool):
            raise DataError(f"{where}: segment {i} needs 'train': true or false")
        out.append((segment["text"], segment["train"]))
    if not any(trained for _, trained in out):
        raise DataError(f"{where}: no segment has 'train': true, so nothing would train")
    return out


def render_segments(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask (1 on the tokens of trained segments)."""
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments:
        piece = tokenizer.encode(text, add_special_tokens=False).ids
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask
