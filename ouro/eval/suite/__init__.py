"""The built-in offline evaluation suite: generated questions that need several steps inside one forward pass.

Three families (`ouro.eval.suite.families`): variable-binding chains (``binding``), left-to-right modular
arithmetic (``arith``) and composed look-ups (``lookup``), each with a difficulty knob (the number of steps),
fixed evaluation seeds and multiple-choice scoring. `materialize` writes them as lm-eval tasks
``ouro_<family>_d<k>`` (groups ``ouro_<family>``); `score_questions` scores them directly at every exit step
(used during training); `training_documents` gives matching training text, disjoint from the questions.
"""

from ouro.eval.suite.families import FAMILIES, Question, family
from ouro.eval.suite.materialize import materialize, task_name, task_names
from ouro.eval.suite.questions import eval_questions, training_documents
from ouro.eval.suite.score import score_questions
from ouro.eval.suite.training_data import ensure_suite_shards  # registers the builtin-<family> sources

__all__ = [
    "FAMILIES",
    "Question",
    "ensure_suite_shards",
    "eval_questions",
    "family",
    "materialize",
    "score_questions",
    "task_name",
    "task_names",
    "training_documents",
]
