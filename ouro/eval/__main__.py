"""``python -m ouro.eval ...``: lm-eval's own command line with the ``ouro`` model registered.

lm-eval 0.4.13 finds models only in its registry (it does not scan entry points for plugins), so a plain
``lm_eval --model ouro`` cannot see this backend; this runs the same CLI after ``import ouro.eval.backend``:

    python -m ouro.eval --model ouro --model_args pretrained=out/model,exit_step=2 --tasks arc_easy --device cpu
"""

from lm_eval.__main__ import cli_evaluate

import ouro.eval.backend  # noqa: F401  (registers the "ouro" model)

if __name__ == "__main__":
    cli_evaluate()
