"""How the suite shares the test machine's cores among pytest-xdist workers (``make test`` uses two).

The longest test files are collected first (`LONGEST_FIRST`), so that ``--dist loadfile --no-loadscope-reorder``
(xdist's own order puts the files with the most tests first) hands them out at the start and the workers end
together, instead of one waiting on a long file handed out last.

Tests marked ``exclusive`` run with no other test beside them.
The SLURM tests need it: their jobs run under time limits and pre-emption warnings timed in seconds, which a
second worker's training runs on the same two cores would push past. Every other test holds a shared lock while
it runs (setup and teardown included); an exclusive one holds it alone. A gate lock, taken before either, gives
the exclusive test the next turn: a worker waiting for it stops the other worker from starting new tests.
Without xdist (one process), nothing is locked.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MARKER = "exclusive"


def _lock_files(config: pytest.Config) -> tuple[Path, Path] | None:
    if not hasattr(config, "workerinput"):  # set by xdist in its workers only
        return None
    # Each worker's base temp dir is <the run's base temp dir>/popen-gw<N>: the run's is shared and pytest
    # removes it with old runs.
    shared = config._tmp_path_factory.getbasetemp().parent
    return shared / "exclusive-tests.gate", shared / "exclusive-tests.lock"


@contextmanager
def _held(gate: Path, lock: Path, exclusive: bool) -> Iterator[None]:
    with gate.open("a") as gate_file, lock.open("a") as lock_file:
        fcntl.flock(gate_file, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate_file, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


#: Test files that run longest (most ``ouro fit`` processes), longest first: the SLURM tests (exclusive, so
#: the other worker waits for them whenever they run), the tiny pipeline (13 stages), the plans of every GPU
#: recipe, then the multi-rank chains.
LONGEST_FIRST = [
    "test_slurm.py",
    "test_tiny_pipeline.py",
    "test_plan_recipes.py",
    "test_elastic_resume.py",
    "test_distributed.py",
    "test_pipeline_fsdp.py",
    "test_eval_in_training_sharded.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: run with no other test beside it under pytest-xdist")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    files = _lock_files(item.config)
    if files is None:
        return (yield)
    with _held(*files, exclusive=item.get_closest_marker(MARKER) is not None):
        return (yield)
