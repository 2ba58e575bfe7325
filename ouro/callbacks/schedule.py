"""Shared pieces of the token-driven callbacks: reading tokens seen and piecewise-constant schedules."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from numbers import Real
from typing import Any


def tokens_seen(pl_module: Any) -> int:
    """Tokens trained on so far (all ranks), as counted and checkpointed by `ouro.module.OuroLM`."""
    try:
        return int(pl_module.tokens_seen)
    except AttributeError:
        raise TypeError(
            f"{type(pl_module).__name__} has no `tokens_seen`; the ouro callbacks need a module "
            "that counts trained tokens, such as ouro.module.OuroLM"
        ) from None


def check_token_count(owner: str, name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}: {name} must be a whole number of tokens, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


class Piecewise:
    """A value that changes at token counts: ``[(0, a), (n1, b), ...]`` means a before n1 tokens, b from n1
    on.

    The first entry must start at 0 tokens and token counts must increase, so every token count has one value.
    """

    def __init__(
        self,
        owner: str,
        name: str,
        points: Sequence[Sequence[Any]],
        kind: type = float,
        minimum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> None:
        if not isinstance(points, Sequence) or isinstance(points, str) or not points:
            raise ValueError(
                f"{owner}: {name} must be a non-empty list of [tokens, value] pairs, got {points!r}"
            )
        self.tokens: list[int] = []
        self.values: list[Any] = []
        for i, point in enumerate(points):
            where = f"{owner}: {name}[{i}]"
            if not isinstance(point, Sequence) or isinstance(point, str) or len(point) != 2:
                raise ValueError(f"{where} must be a [tokens, value] pair, got {point!r}")
            tokens = check_token_count(owner, f"{name}[{i}] tokens", point[0])
            value = point[1]
            if kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{where} value must be an integer, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, Real):
                raise ValueError(f"{where} value must be a number, got {value!r}")
            value = kind(value)
            if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
                bound = f"> {minimum}" if exclusive_minimum else f">= {minimum}"
                raise ValueError(f"{where} value must be {bound}, got {value}")
            if i == 0 and tokens != 0:
                raise ValueError(
                    f"{where} must start at 0 tokens (the value at the start of the stage), got {tokens}"
                )
            if i > 0 and tokens <= self.tokens[-1]:
                raise ValueError(f"{where}: token counts must increase, got {tokens} after {self.tokens[-1]}")
            self.tokens.append(tokens)
            self.values.append(value)

    def __call__(self, tokens: int) -> Any:
        """The value in force after ``tokens`` tokens."""
        return self.values[bisect.bisect_right(self.tokens, tokens) - 1]
