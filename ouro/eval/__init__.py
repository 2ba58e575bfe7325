"""``ouro eval``: lm-evaluation-harness tasks at every depth of a looped model.

`ouro.eval.runner.evaluate` runs tasks on an in-memory model and returns `ouro.eval.results.EvalResults`;
`ouro.eval.backend.OuroEvalLM` is the ``ouro`` model of lm-eval's registry; `ouro.eval.scoring` holds the depth
settings and the one forward that scores all of them; `ouro.eval.cli` is the command.
"""
