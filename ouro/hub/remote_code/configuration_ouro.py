"""Configuration of Ouro looped language models, for ``AutoConfig.from_pretrained(..., trust_remote_code=True)``.

Written by the ``ouro`` toolkit and shipped with every export. Imports only transformers.
"""

from transformers import PretrainedConfig


class OuroConfig(PretrainedConfig):
    """Ouro / LoopLM architecture: Qwen2-style fields plus the loop count and the default exit threshold.

    ``total_ut_steps`` is the number of passes of the shared layer stack per forward; ``early_exit_threshold`` is
    the default Q-exit threshold q (1.0 = always use the last pass).
    """

    model_type = "ouro"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        hidden_act="silu",
        max_position_embeddings=65536,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rope_scaling=None,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=24,
        layer_types=None,
        attention_dropout=0.0,
        total_ut_steps=4,
        early_exit_threshold=1.0,
        head_dim=None,
        **kwargs,
    ):
        if (
            rope_scaling not in (None, {})
            and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default"
        ):
            raise ValueError(f"rope_scaling {rope_scaling!r} is not supported by this Ouro remote code")
        if tie_word_embeddings:
            raise ValueError("Ouro models have an untied lm_head; tie_word_embeddings must be false")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.layer_types = list(layer_types) if layer_types else ["full_attention"] * num_hidden_layers
        self.attention_dropout = attention_dropout
        self.total_ut_steps = total_ut_steps
        self.early_exit_threshold = early_exit_threshold
        super().__init__(tie_word_embeddings=False, **kwargs)


__all__ = ["OuroConfig"]
