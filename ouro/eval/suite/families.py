"""The built-in reasoning families: questions whose answer needs several steps composed inside one forward pass.

Every family draws a question of a given ``difficulty`` (the number of steps) from a `random.Random`, and a
training document: the same kind of statements followed by several answered queries, so that more of the tokens
a model trains on carry an answer (more supervision per token than one question per document). A document
starts with a question exactly as `question` renders it, which is how training text is kept apart from the
evaluation questions.

* ``binding``: variable-binding chains. ``bind: b = h a = 0 d = g h = 6 f = b g = a ? f =`` -> ``6``: the asked
  variable reaches its constant through ``difficulty`` assignments; a second chain of the same length ends in
  another constant, so copying "the" constant is right half of the time at most.
* ``arith``: multi-step modular arithmetic, left to right, modulo 10. ``arith: 3 + 4 * 2 - 1 =`` -> ``3``
  (((3 + 4) * 2) - 1 = 13): ``difficulty`` operations.
* ``lookup``: composed look-ups of a function given in context. ``lookup: a > c b > a c > d d > b ? a 3 =`` ->
  ``b`` (f(f(f(a)))): ``difficulty`` applications.

Symbols are single tokens of the built-in tokenizer (space-separated letters and digits); the answer follows the
prompt after one space, which is lm-eval's default ``target_delimiter``.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

DIGITS = tuple(string.digits)
_LETTERS = tuple(string.ascii_lowercase)


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: ``prompt`` (the context), ``answer`` (one of ``choices``) and its difficulty."""

    prompt: str
    answer: str
    choices: tuple[str, ...]
    difficulty: int

    @property
    def label(self) -> int:
        return self.choices.index(self.answer)


@dataclass(frozen=True)
class Binding:
    """Variable-binding chains: two chains of ``difficulty`` assignments each, statements shuffled."""

    name: str = "binding"
    num_variables: int = 8
    """Letters the variables are drawn from (two chains need 2 x difficulty of them): few symbols, so a small
    model learns the look-ups quickly."""

    @property
    def difficulties(self) -> range:
        return range(1, self.num_variables // 2 + 1)

    def _statements(self, rng: random.Random, difficulty: int) -> tuple[list[str], dict[str, str], str]:
        names = rng.sample(_LETTERS[: self.num_variables], 2 * difficulty)
        constants = rng.sample(DIGITS, 2)
        statements, values = [], {}
        for chain, constant in zip((names[:difficulty], names[difficulty:]), constants):
            previous = constant
            for variable in chain:
                statements.append(f"{variable} = {previous}")
                values[variable] = constant
                previous = variable
        rng.shuffle(statements)
        return statements, values, names[difficulty - 1]

    def question(self, rng: random.Random, difficulty: int) -> Question:
        statements, values, asked = self._statements(rng, difficulty)
        return Question(f"bind: {' '.join(statements)} ? {asked} =", values[asked], DIGITS, difficulty)

    def document(self, rng: random.Random, difficulty: int) -> tuple[str, str]:
        """``(first prompt, text)``: the statements, then every variable asked once (the deepest of the first
        chain first, as in `question`) with its answer."""
        statements, values, asked = self._statements(rng, difficulty)
        order = [asked] + rng.sample([v for v in values if v != asked], len(values) - 1)
        text = f"bind: {' '.join(statements)}" + "".join(f" ? {v} = {values[v]}" for v in order)
        return f"bind: {' '.join(statements)} ? {asked} =", text


@dataclass(frozen=True)
class Arithmetic:
    """Left-to-right modular arithmetic with ``difficulty`` operations among ``+ - *``."""

    name: str = "arith"
    max_difficulty: int = 6
    """Largest number of operations in the suite."""
    modulus: int = 10
    """Every result is taken modulo this (the answer is one digit)."""

    @property
    def difficulties(self) -> range:
        return range(1, self.max_difficulty + 1)

    def _expression(self, rng: random.Random, difficulty: int) -> tuple[str, str]:
        value = rng.randrange(self.modulus)
        text = str(value)
        for _ in range(difficulty):
            op, operand = rng.choice("+-*"), rng.randrange(1, self.modulus)
            value = {"+": value + operand, "-": value - operand, "*": value * operand}[op] % self.modulus
            text += f" {op} {operand}"
        return f"{text} =", str(value)

    def question(self, rng: random.Random, difficulty: int) -> Question:
        expression, answer = self._expression(rng, difficulty)
        return Question(f"{self.name}: {expression}", answer, DIGITS[: self.modulus], difficulty)

    def document(self, rng: random.Random, difficulty: int, count: int = 4) -> tuple[str, str]:
        """``(first prompt, text)``: ``count`` expressions of this difficulty with their answers, ``;`` apart."""
        parts = [self._expression(rng, difficulty) for _ in range(count)]
        return f"{self.name}: {parts[0][0]}", f"{self.name}: " + " ; ".join(" ".join(p) for p in parts)


@dataclass(frozen=True)
class Lookup:
    """Composed look-ups: a random function on ``num_symbols`` letters, applied ``difficulty`` times."""

    name: str = "lookup"
    num_symbols: int = 8
    """Letters the function maps between (also the answer choices)."""
    max_difficulty: int = 6
    """Largest number of applications in the suite."""

    @property
    def difficulties(self) -> range:
        return range(1, self.max_difficulty + 1)

    def _table(self, rng: random.Random) -> tuple[str, dict[str, str]]:
        symbols = _LETTERS[: self.num_symbols]
        function = {s: rng.choice(symbols) for s in symbols}
        order = rng.sample(symbols, len(symbols))
        return " ".join(f"{s} > {function[s]}" for s in order), function

    @staticmethod
    def _apply(function: dict[str, str], start: str, times: int) -> str:
        for _ in range(times):
            start = function[start]
        return start

    def question(self, rng: random.Random, difficulty: int) -> Question:
        table, function = self._table(rng)
        start = rng.choice(_LETTERS[: self.num_symbols])
        answer = self._apply(function, start, difficulty)
        prompt = f"lookup: {table} ? {start} {difficulty} ="
        return Question(prompt, answer, _LETTERS[: self.num_symbols], difficulty)

    def document(self, rng: random.Random, difficulty: int) -> tuple[str, str]:
        """``(first prompt, text)``: the table, then every symbol asked once at this difficulty with its answer."""
        table, function = self._table(rng)
        starts = rng.sample(_LETTERS[: self.num_symbols], self.num_symbols)
        queries = "".join(f" ? {s} {difficulty} = {self._apply(function, s, difficulty)}" for s in starts)
        return f"lookup: {table} ? {starts[0]} {difficulty} =", f"lookup: {table}{queries}"


FAMILIES = {family.name: family for family in (Binding(), Arithmetic(), Lookup())}
"""The built-in families by name; task names are ``ouro_<name>_d<difficulty>``."""


def family(name: str) -> Binding | Arithmetic | Lookup:
    """The family called ``name``, or a ValueError that lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown built-in eval family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]
