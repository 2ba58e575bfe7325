"""The ``ouro`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (``--config`` files compose left to
right, last wins; ``--print_config`` shows the resolved recipe). ``prepare``, ``export``, ``push``, ``generate``,
``pipeline`` and ``plot`` are plain jsonargparse commands that are not Trainer methods.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable

from jsonargparse import ArgumentError, auto_cli

from ouro import early_signals
from ouro.data.cache import cache_dir
from ouro.errors import OuroError, plain_message, usage_error
from ouro.library_warnings import filter_harmless_warnings
from ouro.preflight import choose_compile_caches, hold_compile_caches
from ouro.recipe_yaml import configure_parsing

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _tool_commands() -> dict[str, tuple[str, str]]:
    """name -> (module:function, one-line help). Each imported when its command runs (`_load`): ``ouro --help``
    and one tool do not pay for the others' libraries (lm-eval, matplotlib, Lightning)."""
    return {
        "prepare": (
            "ouro.data.prepare:prepare",
            "Tokenize text / JSONL / parquet / Hub data into litdata shards.",
        ),
        "export": ("ouro.hub.export:export", "Export a run or checkpoint in the official Ouro Hub layout."),
        "push": ("ouro.hub.push:push", "Upload an exported folder to the Hugging Face Hub."),
        "generate": ("ouro.generation.cli:generate", "Generate text with early exit and KV sharing."),
        "eval": ("ouro.eval.cli:evaluate_model", "Run lm-eval tasks at every exit depth (one model load)."),
        "pipeline": (
            "ouro.pipeline:pipeline",
            "Run the stages of a pipeline file in order, resuming where it stopped.",
        ),
        "plot": ("ouro.plot:plot", "Write PNG charts (per-step loss, exit distribution, LR) of a run."),
        "plan": (
            "ouro.plan.cli:plan",
            "Memory per GPU, largest micro-batch and days of a recipe at its real size (fake tensors, CPU).",
        ),
    }


#: Flags a tool command takes under another name: jsonargparse reserves ``--config`` for its own config files,
#: while ``ouro plan --config RECIPE`` names recipes as ``ouro fit`` does.
FLAG_ALIASES = {"plan": {"--config": "--recipes"}}


def tool_arguments(command: str, args: list[str]) -> tuple[Callable, list[str]]:
    """The function behind a tool command and its arguments as jsonargparse reads them."""
    configure_parsing(args)
    filter_harmless_warnings()
    function = _load(_tool_commands()[command][0])
    # Accept --repo-id as well as --repo_id: jsonargparse spells options with underscores.
    aliases = FLAG_ALIASES.get(command, {})
    args = [_alias(_underscore_option(a), aliases) for a in args]
    args = _repeated_list_flags(args, function)
    return function, _bare_flags_to_true(args, function)


def _load(target: str) -> Callable:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _underscore_option(arg: str) -> str:
    if not arg.startswith("--") or arg == "--":
        return arg
    name, sep, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + sep + value


def _alias(arg: str, aliases: dict[str, str]) -> str:
    flag, sep, value = arg.partition("=")
    return aliases.get(flag, flag) + sep + value


def _repeated_list_flags(args: list[str], function: Callable) -> list[str]:
    """``--config A --config B`` means the list ``[A, B]`` for the function's ``list[str]`` parameters (as
    ``ouro fit`` takes repeated ``--config``); jsonargparse alone would keep the last one."""
    names = {
        f"--{name}"
        for name, p in inspect.signature(function).parameters.items()
        if str(p.annotation).replace(" ", "").startswith("list[str]")
    }
    values: dict[str, list[str]] = {}
    rest: list[str] = []
    index = 0
    while index < len(args):
        flag, _, inline = args[index].partition("=")
        if flag in names and (inline or index + 1 < len(args)):
            values.setdefault(flag, []).append(inline or args[index + 1])
            index += 1 if inline else 2
            continue
        rest.append(args[index])
        index += 1
    return rest + [f"{flag}={json.dumps(items)}" for flag, items in values.items()]


def _bare_flags_to_true(args: list[str], function: Callable) -> list[str]:
    """``--dry_run`` alone means ``--dry_run true`` for the function's boolean parameters."""
    flags = {
        f"--{name}"
        for name, p in inspect.signature(function).parameters.items()
        if p.annotation in (bool, "bool")
    }
    result = []
    for i, arg in enumerate(args):
        result.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in flags and (following is None or following.startswith("--")):
            result.append("true")
    return result


def _with_compile_caches(function: Callable) -> Callable:
    """``function``, choosing torch.compile's caches (the user's cache folder) once its arguments are checked."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        choose_compile_caches(cache_dir())
        return function(*args, **kwargs)

    return run


def _print_help() -> None:
    print("usage: ouro {fit,validate,test,predict," + ",".join(_tool_commands()) + "} ...\n")
    print("Train looped language models (Ouro / LoopLM) end to end.\n\nTrainer commands (LightningCLI):")
    for name in TRAINER_COMMANDS:
        print(
            f"  {name:<10} {name.capitalize()} a model from a recipe: ouro {name} --config recipes/<stage>.yaml"
        )
    print("\nTools:")
    for name, (_, text) in _tool_commands().items():
        print(f"  {name:<10} {text}")
    print("\nRun `ouro COMMAND --help` for the options of a command.")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ouro`` console script. An `OuroError` ends with its one-line message and its
    ``exit_code``; so do the standard errors a library raises on bad input (``ValueError``, a missing file: exit 2)
    and the OS errors of the machine (a full disk: exit 1). ``OURO_DEBUG=1`` shows the traceback instead."""
    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except OuroError as error:
        _fail(error, error.exit_code)
    except (ValueError, OSError) as error:
        # Raised by a library (torch, safetensors, tokenizers, the OS) on input or a machine fault that ouro
        # did not wrap; they get the same one line.
        _fail(error, 2 if isinstance(error, (ValueError, *INPUT_OS_ERRORS)) else 1)


#: OS errors that mean "fix the path you gave" rather than "the machine failed".
INPUT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError)


def _fail(error: Exception, exit_code: int) -> None:
    if os.environ.get("OURO_DEBUG"):
        raise error
    print(f"ouro: error: {plain_message(error)}", file=sys.stderr)
    raise SystemExit(exit_code) from None


def _dispatch(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        _print_help()
        return
    command = args[0]
    tools = _tool_commands()
    if command in tools:
        hold_compile_caches()  # before torch is imported
        function, options = tool_arguments(command, args[1:])
        try:
            auto_cli(_with_compile_caches(function), args=options, as_positional=True, exit_on_error=False)
        except ArgumentError as error:
            usage_error(command, error)
        return
    if command not in TRAINER_COMMANDS:
        print(f"ouro: unknown command {command!r}; run `ouro --help` for the list", file=sys.stderr)
        raise SystemExit(2)
    hold_compile_caches()  # before torch is imported; `use_run_scratch` chooses RUN/cache once the recipe is read
    previous = early_signals.hold()  # a pre-emption warning during start-up is kept for the fit, not fatal
    try:
        # Imported here: Lightning's CLI costs seconds of start-up that `ouro --help` and the tools do not need.
        from ouro.trainer_cli import run_trainer_cli

        run_trainer_cli(args)
    finally:
        early_signals.release(previous)


if __name__ == "__main__":
    main()
