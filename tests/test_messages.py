"""Error lines a user reads: short, and advising only flags of the command that printed them."""

from __future__ import annotations

import errno
import inspect
import os
import re
from pathlib import Path

import pytest
import torch

from ouro.cli import main
from ouro.errors import plain_message
from ouro.hub.export import export
from ouro.preflight import check_recipe_syntax
from ouro.recipe_yaml import RecipeError


def _error_line(capsys, args: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ouro: error:")]
    assert len(lines) == 1
    return lines[0]


def _flags(line: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--([a-z][\w.]*)", line))


def _export_flags() -> set[str]:
    return set(inspect.signature(export).parameters)


def test_export_of_a_run_without_a_readable_checkpoint_advises_only_export_flags(tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    line = _error_line(capsys, ["export", str(tmp_path / "run"), str(tmp_path / "out")])
    assert "no readable checkpoint" in line
    assert _flags(line) <= _export_flags(), line
    assert (folder / "last.ckpt").exists(), "another command's read moves nothing aside"


def test_export_of_an_untrusted_checkpoint_advises_only_export_flags(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1, "extra": ValueError("pickled object")}, path)
    line = _error_line(capsys, ["export", str(tmp_path / "run"), str(tmp_path / "out")])
    assert "was not loaded" in line
    assert _flags(line) <= _export_flags(), line


def test_an_unreadable_checkpoint_line_is_short_and_the_detail_waits_for_ouro_debug(
    tmp_path, capsys, monkeypatch
):
    """PyTorch explains a damaged file in 300-700 characters; the line naming it stays under 200."""
    from ouro.resume import newest_readable_checkpoint

    monkeypatch.chdir(tmp_path)
    folder = Path("runs") / "stage" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "global_step": 2}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    damaged = {"last.ckpt": data[: len(data) // 3], "step-1.ckpt": b"", "step-2.ckpt": b"garbage" * 9}
    for name, content in damaged.items():
        (folder / name).write_bytes(content)
    monkeypatch.delenv("OURO_DEBUG", raising=False)
    with pytest.raises(ValueError) as refused:
        newest_readable_checkpoint(folder.parent, move_aside=True, resuming=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all("is unreadable" in line for line in lines)
    assert "Check the documentation" not in "".join(lines)
    for line in [*lines, f"ouro: error: {refused.value}"]:
        assert len(line) < 200, (len(line), line)

    for name, content in damaged.items():
        (folder / name).write_bytes(content)
    monkeypatch.setenv("OURO_DEBUG", "1")
    with pytest.raises(ValueError):
        newest_readable_checkpoint(folder.parent, move_aside=True, resuming=True)
    err = capsys.readouterr().err
    assert "Check the documentation of torch.load" in err, "PyTorch's whole explanation, on request"


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--bogus", "1"],
        ["fit", "--trainer.max_steps", "many"],
        ["export"],
        ["prepare", "in.jsonl", "out", "--bogus", "1"],
        ["prepare", "in.jsonl", "out", "--num_workers", "x"],
    ],
    ids=[
        "fit-unknown-option",
        "fit-bad-value",
        "tool-missing-arguments",
        "tool-unknown-option",
        "tool-bad-value",
    ],
)
def test_a_parser_error_comes_first_with_at_most_a_short_hint(args, capsys):
    """Not some 90 lines of usage before it: the error line, then at most a line saying where the options are."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[0].startswith("ouro: error: "), lines[:3]
    assert len(lines) <= 2 and all(len(line) < 300 for line in lines), lines
    assert f"ouro {args[0]} --help" in lines[-1]
    assert "Union subtypes" not in lines[0], "the reason, not jsonargparse's list of every type it tried"


def test_eval_in_training_names_its_own_arguments_for_an_unknown_task(tmp_path, monkeypatch):
    """Inside `ouro fit`, which has no --tasks or --include_path: the callback's arguments are named, and the
    mistake is found before training."""
    from types import SimpleNamespace

    from ouro.callbacks.eval_in_training import EvalInTraining
    from ouro.eval import runner

    # lm-eval's own task index takes a minute to build on 2 busy cores: a stand-in that knows one task.
    monkeypatch.setattr(
        runner,
        "_task_manager",
        lambda paths, include_defaults=True: SimpleNamespace(
            all_tasks=["arc_easy"], all_subtasks=["arc_easy"]
        ),
    )
    monkeypatch.setattr(runner, "suite_include_path", lambda: None)

    with pytest.raises(ValueError) as refused:
        EvalInTraining(tasks="no_such_task_anywhere").setup(None, None, "fit")
    message = str(refused.value)
    assert "EvalInTraining's tasks" in message and "EvalInTraining's include_path" in message
    assert not _flags(message), message
    with pytest.raises(FileNotFoundError, match="EvalInTraining's include_path"):
        EvalInTraining(tasks="arc_easy", include_path=str(tmp_path / "none")).setup(None, None, "fit")


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("trainer:\n  max_steps: 3\n  callbacks: [a, b\nmodel:\n  x: 1\n")
    with pytest.raises(RecipeError, match=r"recipe .*broken\.yaml is not valid YAML: line 4, column 6: "):
        check_recipe_syntax(["fit", "--config", str(recipe)])
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={recipe}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "line 4" in err and "usage" not in err


def test_jsonargparse_union_error_becomes_the_reason():
    text = (
        "Does not validate against any of the Union subtypes\nSubtypes: [<class 'A'>, <class 'NoneType'>]\n"
        "Errors:\n  - seq_len and batch_size must be >= 1 and num_workers >= 0, got 16, 0, 1\n"
        "  - Expected a <class 'NoneType'>\nGiven value type: <class 'Namespace'>\nGiven value: Namespace(x=1)"
    )
    assert (
        plain_message(ValueError(text))
        == "seq_len and batch_size must be >= 1 and num_workers >= 0, got 16, 0, 1"
    )
    assert plain_message(ValueError("a\n  b")) == "a b"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/logs/metrics.csv")
    assert plain_message(full).startswith(
        "No space left on device writing runs/x/logs/metrics.csv; what ouro"
    )
