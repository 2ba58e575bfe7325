"""The looped model in plain PyTorch (no Lightning): layers, attention backends, passes and exit gate."""

from ouro.model.attention import AttentionLayout
from ouro.model.looped import LoopOutput, OuroForCausalLM, OuroModel, flops_per_token

__all__ = ["AttentionLayout", "LoopOutput", "OuroForCausalLM", "OuroModel", "flops_per_token"]
