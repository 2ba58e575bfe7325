"""The looped model in plain PyTorch (no Lightning): layers, attention backends, the loop (embed, then one step
per pass), the exit distribution and Q-exit."""

from ouro.model.attention import AttentionLayout
from ouro.model.exit import ExitCDF, exit_distribution, exit_log_distribution, q_exit_steps
from ouro.model.looped import LoopOutput, OuroForCausalLM, OuroModel, flops_per_token

__all__ = [
    "AttentionLayout",
    "ExitCDF",
    "LoopOutput",
    "OuroForCausalLM",
    "OuroModel",
    "exit_distribution",
    "exit_log_distribution",
    "flops_per_token",
    "q_exit_steps",
]
