"""A word-level tokenizer for a built-in task: every space-separated word of its vocabulary is one token.

The ``roots`` family writes each statement (``c>a``) as one word, so that one look-up is one attention step;
the built-in BPE tokenizer would split it into three tokens. The vocabulary is fixed by the family, so the
tokenizer is the same file on every machine and its hash identifies it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from ouro.chat import SPECIAL_TOKENS

UNKNOWN = "<|unk|>"


def word_tokenizer(words: Iterable[str]):
    """`tokenizers.Tokenizer` with ids ``SPECIAL_TOKENS`` (EOS = 0, the ChatML tokens), ``<|unk|>``, then
    ``words`` in the given order; splits on whitespace only and decodes by joining with spaces."""

    specials = [*SPECIAL_TOKENS, UNKNOWN]
    vocab = {token: i for i, token in enumerate([*specials, *dict.fromkeys(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return tokenizer
