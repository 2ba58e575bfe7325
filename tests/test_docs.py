"""The docs tell the truth: every ``ouro`` command in a bash block parses, and docs cite only files in the repo."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", path.read_text(), re.M | re.S)


def ouro_commands(block: str) -> list[list[str]]:
    """Every ``ouro ...`` command of a bash block, as argument lists (continuations joined, comments dropped,
    launchers such as ``srun`` / ``torchrun --no-python`` / ``VAR=value`` in front skipped)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SHELL_OPERATORS:
                segment.append(token)
                continue
            start = _program_start(segment)
            if start is not None:
                commands.append(segment[start + 1 :])
            segment = []
    return commands


LAUNCHERS = {"srun", "torchrun", "time", "nohup", "exec"}


def _program_start(segment: list[str]) -> int | None:
    """Index of the ``ouro`` program in a command, or None when it is not an ``ouro`` command (``ouro`` as an
    argument value, e.g. ``--model ouro``, does not count)."""
    if "ouro" not in segment:
        return None
    index = segment.index("ouro")
    before = [t for t in segment[:index] if not re.match(r"^[A-Z_][A-Z0-9_]*=", t)]
    if not before or before[0] in LAUNCHERS:
        return index
    return None


def all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for block in bash_blocks(path):
            found += [(path.name, command) for command in ouro_commands(block)]
    return found


COMMANDS = all_commands()


def test_the_docs_show_commands_of_every_kind():
    kinds = {command[0] for _, command in COMMANDS if command}
    assert {"fit", "prepare", "export", "push", "generate", "pipeline"} <= kinds


def check_command(args: list[str], capsys) -> str | None:
    """None if ``ouro ARGS`` parses (nothing runs), else the parser's message."""
    from jsonargparse import auto_parser

    from ouro.cli import TRAINER_COMMANDS, _tool_commands, tool_arguments

    if not args or args[0] in ("-h", "--help") or "--help" in args[1:]:
        return (
            None if not args or args[0] in ("-h", "--help", *TRAINER_COMMANDS, *_tool_commands()) else args[0]
        )
    command, rest = args[0], args[1:]
    if command in TRAINER_COMMANDS:
        from ouro.trainer_cli import run_trainer_cli

        rest = [a for a in rest if a != "--print_config"]
        try:
            run_trainer_cli([command, *rest, "--print_config"])  # parses every value, instantiates nothing
        except SystemExit as stop:
            if stop.code in (0, None):
                return None
        return capsys.readouterr().err.strip().splitlines()[-1]
    if command not in _tool_commands():
        return f"unknown command {command!r}"
    function, options = tool_arguments(command, rest)
    try:
        auto_parser(function, as_positional=True).parse_args(options)
    except SystemExit:
        return capsys.readouterr().err.strip().splitlines()[-1]
    return None


@pytest.mark.parametrize(
    "source, args", COMMANDS, ids=[f"{name}:{' '.join(args)[:60]}" for name, args in COMMANDS]
)
def test_documented_command_parses(source, args, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    problem = check_command(args, capsys)
    assert problem is None, f"{source}: `ouro {' '.join(args)}` does not parse: {problem}"


def test_the_check_rejects_unknown_flags(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert check_command(["prepare", "--inputs", "raw/*.jsonl", "--output", "data/x"], capsys)
    assert check_command(["fit", "--config", "recipes/warmup.yaml", "--no_such_flag", "1"], capsys)
    assert check_command(["generate", "out/m", "--prompt", "hi"], capsys)
    assert check_command(["generate", "out/m", "hi", "--exit_threshold", "0.9"], capsys) is None


def test_docs_cite_only_files_in_the_repo():
    """No doc or source points outside the repository (e.g. at notes next to the checkout)."""
    texts = [*DOCS, *sorted((ROOT / "ouro").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py"))]
    texts += sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "recipes").rglob("*.yaml"))
    outside = re.compile(r"\.\./shared|(?<![\w/])shared/\w+\.md|\b(?:OURO|DESIGN|PITFALLS)\.md\b")
    for path in texts:
        if path.name == "test_docs.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not outside.search(line), (
                f"{path.relative_to(ROOT)}:{number} cites a file outside the repo"
            )
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"


def test_model_card_command_parses(capsys, monkeypatch):
    from ouro.config import OuroConfig
    from ouro.hub.card import model_card

    monkeypatch.chdir(ROOT)
    card = model_card(OuroConfig.preset("tiny"), "me/ouro-tiny", [], 1000, "runs/x", 123, "bfloat16")
    shown = re.findall(r"`(ouro generate [^`]+)`", card)
    assert shown, "the card shows an ouro generate command"
    for command in shown:
        args = shlex.split(command)[1:]
        assert check_command(args, capsys) is None, command
