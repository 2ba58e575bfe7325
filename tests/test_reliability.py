"""The names tests/test_preemption.py still imports from here (that file has another owner). The crash-safety
tests that lived here are split by concern: test_kill_resume.py, test_checkpoint_selection.py, test_full_disk.py,
test_resume_settings.py, test_position_limits.py, test_run_directory.py and test_messages.py; their helpers are in
reliability_helpers.py. Delete this file once test_preemption.py imports them from reliability_helpers."""

from reliability_helpers import age_file as _age
from reliability_helpers import assert_same_training_state as _assert_same_training_state
from reliability_helpers import fit_args as _fit_args
from reliability_helpers import fit_in_process as _fit_in_process
from reliability_helpers import load_checkpoint as _load
from reliability_helpers import tiny_checkpoint as _tiny_checkpoint
from reliability_helpers import write_recipe as _recipe

__all__ = [
    "_age",
    "_assert_same_training_state",
    "_fit_args",
    "_fit_in_process",
    "_load",
    "_recipe",
    "_tiny_checkpoint",
]
