"""Generation with a looped model: per-(pass, layer) KV cache, real early exit, KV sharing, streaming (ChatML: `ouro.chat`)."""

from ouro.generation.cache import SHARING_MODES, LoopKVCache
from ouro.generation.generate import GenerationResult, generate

__all__ = ["SHARING_MODES", "GenerationResult", "LoopKVCache", "generate"]
