"""Generation with a looped model: per-(pass, layer) KV cache, real early exit, KV sharing, chat and streaming."""

from ouro.generation.cache import SHARING_MODES, LoopKVCache
from ouro.generation.chat import CHATML_TEMPLATE, format_chat
from ouro.generation.generate import GenerationResult, generate

__all__ = ["CHATML_TEMPLATE", "SHARING_MODES", "GenerationResult", "LoopKVCache", "format_chat", "generate"]
