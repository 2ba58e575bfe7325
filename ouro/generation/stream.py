"""Streaming generated text to a terminal as tokens arrive."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class TextStreamer:
    """A ``stream`` callback for `ouro.generation.generate` that prints one prompt's new text incrementally.

    Decodes all tokens so far and writes only the new suffix, so multi-token characters and merges print
    correctly.
    """

    def __init__(self, tokenizer: Any, row: int = 0, out: TextIO | None = None) -> None:
        self.tokenizer, self.row = tokenizer, row
        self.out = out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, tokens: list[int | None]) -> None:
        token = tokens[self.row]
        if token is None:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def end(self) -> None:
        self.out.write("\n")
        self.out.flush()
