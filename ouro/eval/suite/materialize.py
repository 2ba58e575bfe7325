"""Write the built-in suite as lm-eval task YAMLs over local JSONL, for lm-eval's include path.

``materialize(directory)`` writes, for every family and difficulty, ``<family>/ouro_<family>_d<k>.jsonl`` (the
questions) and ``<family>/ouro_<family>_d<k>.yaml`` (a multiple-choice task with ``dataset_path: json``), plus
one group per family, ``ouro_<family>``, over its difficulties. Files are only rewritten when their content
changes, so materialising again is a no-op and concurrent readers never see a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.eval.suite.families import FAMILIES
from ouro.eval.suite.questions import EVAL_SIZE, eval_questions

_VERSION = 2  # bump when questions or templates change: lm-eval records it in results.json


def task_name(family: str, difficulty: int) -> str:
    """``ouro_<family>_d<difficulty>``."""
    return f"ouro_{family}_d{difficulty}"


def task_names(family: str | None = None) -> list[str]:
    """Every built-in task name (of one family, or of all)."""
    names = [family] if family is not None else list(FAMILIES)
    return [task_name(n, d) for n in names for d in FAMILIES[n].difficulties]


def _task_yaml(name: str, family: str, data_file: Path) -> str:
    # JSON is valid YAML: no YAML writer needed, and the quoting of templates is exact.
    config = {
        "task": name,
        "tag": ["ouro_suite"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": _VERSION, "family": family},
    }
    return json.dumps(config, indent=2) + "\n"


def _group_yaml(family: str) -> str:
    config = {
        "group": f"ouro_{family}",
        "task": task_names(family),
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": _VERSION},
    }
    return json.dumps(config, indent=2) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def materialize(directory: str | Path, size: int = EVAL_SIZE) -> Path:
    """Write the suite's task YAMLs and JSONL under ``directory`` (created) and return it, resolved.

    Deterministic and idempotent: the same ``size`` always gives the same files. Pass the returned folder to
    lm-eval as an include path (``--include_path`` / ``TaskManager(include_path=...)``).
    """
    root = Path(directory).expanduser().resolve()
    for family, source in FAMILIES.items():
        folder = root / family
        folder.mkdir(parents=True, exist_ok=True)
        for difficulty in source.difficulties:
            name = task_name(family, difficulty)
            rows = [
                {"prompt": q.prompt, "choices": list(q.choices), "label": q.label, "difficulty": difficulty}
                for q in eval_questions(family, difficulty, size)
            ]
            data_file = folder / f"{name}.jsonl"
            _write_if_changed(data_file, "".join(json.dumps(r) + "\n" for r in rows))
            _write_if_changed(folder / f"{name}.yaml", _task_yaml(name, family, data_file))
        _write_if_changed(folder / f"_ouro_{family}.yaml", _group_yaml(family))
    return root
