"""ouro: train looped language models (the Ouro / LoopLM family) end to end."""

from ouro.config import OuroConfig
from ouro.model import LoopOutput, OuroForCausalLM

__all__ = ["LoopOutput", "OuroConfig", "OuroForCausalLM"]
__version__ = "0.1.0"
