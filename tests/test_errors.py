"""One error family: every user-facing error is an `OuroError` with its exit code, and `ouro` ends on one line."""

from __future__ import annotations

import ast
import errno
import inspect
from pathlib import Path

import pytest

from ouro import cli, errors
from ouro.errors import OuroError

FAMILY = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "ouro.errors"
]


def test_every_error_class_of_ouro_lives_in_ouro_errors_under_ouro_error():
    assert len(FAMILY) > 12  # the base and at least the twelve errors it gathered
    for error_class in FAMILY:
        assert issubclass(error_class, OuroError)
        assert error_class.exit_code in (1, 2), error_class
    package = Path(errors.__file__).parent
    elsewhere = [
        f"{path.relative_to(package)}: {node.name}"
        for path in package.rglob("*.py")
        if path.name != "errors.py" and "remote_code" not in path.parts  # shipped to the Hub, standalone
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base).endswith(("Error", "Exception")) for base in node.bases)
    ]
    # A pre-emption is a stop, not an error: the trainer CLI ends it with exit status 75 (requeue).
    assert elsewhere == ["preemption.py: Preempted"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            errors.StageInitError(
                "init_from runs/x does not exist; run `ouro fit --config recipes/warmup.yaml`"
            ),
            2,
        ),
        (errors.PushError("could not reach the Hub; retry"), 2),
        (errors.WriteError("could not write checkpoint; the previous one is intact", errno.ENOSPC), 1),
        (errors.SourceNotFoundError("model source nowhere does not exist"), 2),
        (ValueError("a library refused a value"), 2),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.txt"), 2),
        (OSError(errno.EIO, "Input/output error"), 1),
    ],
)
def test_the_cli_ends_an_error_with_one_line_and_its_exit_code(monkeypatch, capsys, error, code):
    def fail(args):
        raise error

    monkeypatch.delenv("OURO_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_dispatch", fail)
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit"])
    assert stop.value.code == code
    message = capsys.readouterr().err
    assert message.startswith("ouro: error: ") and message.count("\n") == 1


def test_a_bug_keeps_its_traceback_and_ouro_debug_shows_one_for_user_errors(monkeypatch):
    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_dispatch", bug)
    with pytest.raises(KeyError):
        cli.main(["fit"])

    def user_error(args):
        raise errors.ConfigError("hidden_size must be positive")

    monkeypatch.setattr(cli, "_dispatch", user_error)
    monkeypatch.setenv("OURO_DEBUG", "1")
    with pytest.raises(errors.ConfigError):
        cli.main(["fit"])
