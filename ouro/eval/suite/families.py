"""The built-in reasoning families: questions whose answer needs several steps composed inside one forward pass.

Every family draws a question of a given ``difficulty`` (the number of steps) from a `random.Random`, and a
training document: the same kind of statements followed by several answered queries, so that more of the tokens
a model trains on carry an answer (more supervision per token than one question per document). A document never
answers a question of its ``avoid`` set (the evaluation prompts), rendered exactly as `question` renders it:
that is how training text is kept apart from the evaluation questions.

* ``binding``: variable-binding chains. ``bind: b = h a = 0 d = g h = 6 f = b g = a ? f =`` -> ``6``: the asked
  variable reaches its constant through ``difficulty`` assignments; a second chain of the same length ends in
  another constant, so copying "the" constant is right half of the time at most.
* ``arith``: multi-step modular arithmetic, left to right, modulo 10. ``arith: 3 + 4 * 2 - 1 =`` -> ``3``
  (((3 + 4) * 2) - 1 = 13): ``difficulty`` operations.
* ``roots``: find the root of a letter through ``difficulty`` parent links, each statement one token of the
  family's word tokenizer (see `Roots`); trained on the answers only.
* ``lookup``: composed look-ups of a function given in context. ``lookup: a > c b > a c > d d > b ? a 3 =`` ->
  ``b`` (f(f(f(a)))): ``difficulty`` applications.

Symbols are single tokens of the built-in tokenizer (space-separated letters and digits); the answer follows the
prompt after one space, which is lm-eval's default ``target_delimiter``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

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


class Family:
    """What every family shares besides its own fields: how its training documents are written and ordered."""

    format = "pretrain"
    """Training documents are plain text (``pretrain``) or text segments with train flags (``sft``)."""
    curriculum_weights: tuple[int, ...] | None = None
    """Relative length of each difficulty's phase in the training curriculum (None: equal phases)."""
    rehearse = True
    """Each phase after the first also draws half of its documents from the easier difficulties."""

    def document(self, rng: random.Random, difficulty: int, avoid: Container[str] = frozenset()):
        """A training document of ``difficulty`` (text, or text segments for ``sft``), none of whose answered
        queries is a prompt in ``avoid``: a draw that would answer one is drawn again."""
        while True:
            prompts, text = self._document(rng, difficulty, avoid)
            if not any(prompt in avoid for prompt in prompts):
                return text

    def _document(self, rng: random.Random, difficulty: int, avoid: Container[str]) -> tuple[list[str], Any]:
        """``(the prompt of every query it answers, as `question` renders it, document)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Binding(Family):
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

    def _document(self, rng: random.Random, difficulty: int, avoid: Container[str]) -> tuple[list[str], str]:
        """The statements, then every variable asked once (the deepest of the first chain first, as in
        `question`) with its answer."""
        statements, values, asked = self._statements(rng, difficulty)
        order = [asked] + rng.sample([v for v in values if v != asked], len(values) - 1)
        head = f"bind: {' '.join(statements)}"
        return [f"{head} ? {v} =" for v in order], head + "".join(f" ? {v} = {values[v]}" for v in order)


@dataclass(frozen=True)
class Arithmetic(Family):
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

    def _document(
        self, rng: random.Random, difficulty: int, avoid: Container[str], count: int = 4
    ) -> tuple[list[str], str]:
        """``count`` expressions of this difficulty with their answers, ``;`` apart. Each one is drawn again
        while it is in ``avoid`` (at difficulty 1 there are only 270 expressions, most of them evaluated)."""
        parts = []
        while len(parts) < count:
            expression, answer = self._expression(rng, difficulty)
            if f"{self.name}: {expression}" not in avoid:
                parts.append((expression, answer))
        prompts = [f"{self.name}: {expression}" for expression, _ in parts]
        return prompts, f"{self.name}: " + " ; ".join(" ".join(p) for p in parts)


@dataclass(frozen=True)
class Lookup(Family):
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

    def _document(self, rng: random.Random, difficulty: int, avoid: Container[str]) -> tuple[list[str], str]:
        """The table, then every symbol asked once at this difficulty with its answer."""
        table, function = self._table(rng)
        starts = rng.sample(_LETTERS[: self.num_symbols], self.num_symbols)
        queries = "".join(f" ? {s} {difficulty} = {self._apply(function, s, difficulty)}" for s in starts)
        return [f"lookup: {table} ? {s} {difficulty} =" for s in starts], f"lookup: {table}{queries}"


@dataclass(frozen=True)
class Roots(Family):
    """Find the root: ``num_trees`` chains of parent links, each ending in a root that is its own parent.

    A statement ``c>a`` (one word, one token of the family's word tokenizer) says that ``a`` is the parent of
    ``c``; a root ``b>b`` is its own parent. The question names one statement and asks for its root:
    ``roots: c>a a>b b>b ... ? c>a`` -> ``b``. ``difficulty`` is the number of links from the asked letter to
    its root, so reading the asked statement answers difficulty 1, and difficulty k needs k - 1 look-ups
    composed. A look-up is the same step every time and a root maps to itself, so a looped model can keep
    applying it: once at the root, further passes change nothing. Guessing one of the roots is right a
    ``1 / num_trees`` of the time.
    """

    name: str = "roots"
    num_trees: int = 3
    """Chains per question (their roots are the plausible answers)."""
    max_difficulty: int = 3
    """Links below each root: every chain has this many letters besides its root (12 letters in all: few
    statement words, so each is seen often)."""
    queries: int = 15
    """Answered questions per training document (only the answers train: more supervision per token)."""
    format: str = "sft"
    """Training documents are text segments with train flags (``ouro prepare --format sft``)."""
    curriculum_weights: tuple[int, ...] = (1, 1, 4)
    """Relative length of each difficulty's phase in the training curriculum: the composed look-ups of the
    last one take most of the run to learn."""
    rehearse: bool = False
    """No extra rehearsal documents: each document already asks letters of every depth up to its own."""

    @property
    def difficulties(self) -> range:
        return range(1, self.max_difficulty + 1)

    @property
    def letters(self) -> tuple[str, ...]:
        return _LETTERS[: self.num_trees * (self.max_difficulty + 1)]

    def words(self) -> list[str]:
        """The family's whole vocabulary, in a fixed order (the word tokenizer's ids follow it)."""
        pairs = [f"{child}>{parent}" for child in self.letters for parent in self.letters]
        return [f"{self.name}:", "?", *self.letters, *pairs]

    def _forest(self, rng: random.Random) -> tuple[str, list[list[str]]]:
        """The statements (shuffled) and the chains, each listed from its root down."""
        letters = rng.sample(self.letters, len(self.letters))
        size = self.max_difficulty + 1
        chains = [letters[i * size : (i + 1) * size] for i in range(self.num_trees)]
        statements = [f"{c[i]}>{c[max(i - 1, 0)]}" for c in chains for i in range(size)]
        rng.shuffle(statements)
        return " ".join(statements), chains

    @staticmethod
    def _query(chain: list[str], depth: int) -> tuple[str, str]:
        """``(asked statement, root)`` for the letter ``depth`` links below the root of ``chain``."""
        return f"{chain[depth]}>{chain[max(depth - 1, 0)]}", chain[0]

    def question(self, rng: random.Random, difficulty: int) -> Question:
        statements, chains = self._forest(rng)
        asked, root = self._query(rng.choice(chains), difficulty)
        return Question(f"{self.name}: {statements} ? {asked}", root, self.letters, difficulty)

    def _document(
        self, rng: random.Random, difficulty: int, avoid: Container[str]
    ) -> tuple[list[str], list[dict]]:
        """Segments: the statements, then `queries` questions with their roots, each asking a letter at most
        ``difficulty`` links deep (roots included); only the answers train."""
        statements, chains = self._forest(rng)
        asked = [self._query(rng.choice(chains), rng.randint(0, difficulty)) for _ in range(self.queries)]
        segments = [{"text": f"{self.name}: {statements} ? {asked[0][0]}", "train": False}]
        for i, (statement, root) in enumerate(asked):
            if i:
                segments.append({"text": f" ? {statement}", "train": False})
            segments.append({"text": f" {root}", "train": True})
        return [f"{self.name}: {statements} ? {statement}" for statement, _ in asked], segments


FAMILIES = {family.name: family for family in (Binding(), Arithmetic(), Lookup(), Roots())}
"""The built-in families by name; task names are ``ouro_<name>_d<difficulty>``."""


def family(name: str) -> Binding | Arithmetic | Lookup | Roots:
    """The family called ``name``, or a ValueError that lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown built-in eval family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]
