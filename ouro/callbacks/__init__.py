"""Token-driven training callbacks: LR schedule, batch ramp, long context, loop/β schedule, budget, metrics,
in-training evaluation.

Every schedule is a function of ``pl_module.tokens_seen`` (restored from the checkpoint) and every callback
saves its state under its class name, so a resumed stage continues exactly.
"""

from ouro.callbacks.batch_ramp import BatchSizeRamp
from ouro.callbacks.eval_in_training import EvalInTraining
from ouro.callbacks.long_context import LongContextSchedule
from ouro.callbacks.loop_metrics import LoopMetrics
from ouro.callbacks.loop_schedule import LoopSchedule
from ouro.callbacks.lr_schedule import WarmupStableDecay
from ouro.callbacks.progress import StageProgress
from ouro.callbacks.throughput import Throughput
from ouro.callbacks.token_budget import TokenBudget

__all__ = [
    "BatchSizeRamp",
    "EvalInTraining",
    "LongContextSchedule",
    "LoopMetrics",
    "LoopSchedule",
    "StageProgress",
    "Throughput",
    "TokenBudget",
    "WarmupStableDecay",
]
