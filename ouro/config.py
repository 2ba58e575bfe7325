"""`OuroConfig`: the fields of the official Ouro ``config.json``, presets, validation and (de)serialisation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ouro.errors import ConfigError

#: ``auto_map`` of the official checkpoints: the remote code that transformers loads with trust_remote_code.
AUTO_MAP = {
    "AutoConfig": "configuration_ouro.OuroConfig",
    "AutoModel": "modeling_ouro.OuroModel",
    "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM",
}


@dataclass
class OuroConfig:
    """Architecture of a looped (Ouro / LoopLM) language model.

    Field names and meanings are those of the official Ouro ``config.json`` (Qwen2-style fields plus
    ``total_ut_steps`` and ``early_exit_threshold``), so a config round-trips with the released checkpoints.
    The defaults are Ouro-1.4B; use ``OuroConfig.preset(name)`` for the other sizes.
    """

    vocab_size: int = 49152
    """Vocabulary size (rows of the embedding and of the LM head). Ouro uses the SmolLM2 tokenizer: 49,152."""
    hidden_size: int = 2048
    """Width of the residual stream."""
    intermediate_size: int = 5632
    """Inner width of the SwiGLU MLP."""
    num_hidden_layers: int = 24
    """Layers in the shared stack (run ``total_ut_steps`` times per forward). 24 for 1.4B, 48 for 2.6B."""
    num_attention_heads: int = 16
    """Query heads; must divide ``hidden_size``."""
    num_key_value_heads: int = 16
    """Key/value heads (grouped-query attention when fewer than the query heads); must divide the query heads."""
    hidden_act: str = "silu"
    """Activation of the gated MLP. Only ``silu`` (SwiGLU) is supported."""
    max_position_embeddings: int = 65536
    """Longest sequence the model is meant for (informational; RoPE has no learned table)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    use_cache: bool = True
    """Whether generation keeps a KV cache (kept for compatibility with the official config)."""
    tie_word_embeddings: bool = False
    """Ouro unties the LM head from the embedding; tying is not supported."""
    rope_theta: float = 1000000.0
    """RoPE base. The paper trains with 10K (stages 1a/1b), 40K (annealing) and 1M (long context on)."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling dictionary of the official config; only ``None`` (plain RoPE) is supported."""
    use_sliding_window: bool = False
    """Sliding-window attention (unused by Ouro; must stay False)."""
    sliding_window: int | None = None
    """Window size when sliding-window attention is on (unused by Ouro)."""
    max_window_layers: int = 24
    """Qwen2 field kept for compatibility (unused by Ouro)."""
    layer_types: list[str] | None = None
    """Attention type of every layer; all ``full_attention`` for Ouro. Filled in when left empty."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (0 in Ouro)."""
    total_ut_steps: int = 4
    """Recurrent steps T: how many times the whole layer stack runs per forward (8 in the warmup stage, 4 after)."""
    early_exit_threshold: float = 1.0
    """Default Q-exit threshold q at inference: exit at the first step whose exit CDF reaches q (1.0 = all steps)."""
    bos_token_id: int | None = None
    """Token id that starts a sequence, if the tokenizer has one (SmolLM2: none in practice)."""
    eos_token_id: int | None = 0
    """End-of-document token id (SmolLM2 ``<|endoftext|>`` = 0)."""
    pad_token_id: int | None = None
    """Padding token id used by batched generation, if any."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other keys found in a loaded ``config.json`` (kept so an export round-trips them)."""

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.total_ut_steps < 1:
            raise ConfigError(
                f"total_ut_steps must be >= 1 (the number of passes of the stack), got {self.total_ut_steps}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"hidden_size / num_attention_heads = {self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.rms_norm_eps <= 0:
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if not 0.0 <= self.early_exit_threshold <= 1.0:
            raise ConfigError(f"early_exit_threshold must lie in [0, 1], got {self.early_exit_threshold}")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings must be false: Ouro has an untied lm_head")
        if (
            self.rope_scaling not in (None, {})
            and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) != "default"
        ):
            raise ConfigError(f"rope_scaling {self.rope_scaling!r} is not supported; set it to null")
        if self.use_sliding_window:
            raise ConfigError("use_sliding_window must be false: Ouro uses full attention in every layer")
        if any(t != "full_attention" for t in self.layer_types):
            raise ConfigError("layer_types must all be 'full_attention' (Ouro has no sliding-window layers)")
        if (
            len(self.layer_types) != self.num_hidden_layers
        ):  # follows the layer count (only one value is valid)
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"attention_dropout must lie in [0, 1), got {self.attention_dropout}")

    # ----------------------------------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> OuroConfig:
        """A named size: ``ouro-1.4b``, ``ouro-2.6b``, or the CPU sizes ``tiny``, ``small``, ``bench``."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
        values = {**base, **overrides}
        if "num_hidden_layers" in overrides and "layer_types" not in overrides:
            values["layer_types"] = None
        return cls(**values)

    def replace(self, **changes: Any) -> OuroConfig:
        """A copy with some fields changed (``layer_types`` follows a new layer count)."""
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = None
        return replace(self, **changes)

    # ------------------------------------------------------------------------------------------------- config.json
    def to_dict(self) -> dict[str, Any]:
        """The official ``config.json`` content."""
        data = asdict(self)
        extra = data.pop("extra")
        data = {**extra, **data}
        data.update(model_type="ouro", architectures=["OuroForCausalLM"], auto_map=dict(AUTO_MAP))
        data["head_dim"] = self.head_dim
        data.setdefault("torch_dtype", "bfloat16")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OuroConfig:
        """Read an official ``config.json`` dictionary; unknown keys are kept in ``extra``."""
        data = dict(data)
        model_type = data.get("model_type", "ouro")
        if model_type != "ouro":
            raise ConfigError(f"config.json has model_type {model_type!r}, expected 'ouro'")
        known = {f.name for f in fields(cls)} - {"extra"}
        derived = {"model_type", "architectures", "auto_map", "head_dim", "torch_dtype"}  # written by save
        head_dim = data.get("head_dim")
        values = {k: data.pop(k) for k in list(data) if k in known}
        extra = {k: v for k, v in data.items() if k not in derived}
        config = cls(**values, extra=extra)
        if head_dim is not None and head_dim != config.head_dim:
            raise ConfigError(
                f"config.json head_dim {head_dim} differs from hidden_size / num_attention_heads "
                f"= {config.head_dim}; such checkpoints are not supported"
            )
        return config

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` into ``directory``."""
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> OuroConfig:
        """Read ``config.json`` (a file, or a directory that holds one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: expected the config.json of an Ouro model")
        return cls.from_dict(json.loads(path.read_text()))


_OFFICIAL = dict(
    vocab_size=49152,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=16,
    num_key_value_heads=16,
    rope_theta=1000000.0,
    max_position_embeddings=65536,
    total_ut_steps=4,
)

PRESETS: dict[str, dict[str, Any]] = {
    "ouro-1.4b": dict(_OFFICIAL, num_hidden_layers=24, max_window_layers=24),
    "ouro-2.6b": dict(_OFFICIAL, num_hidden_layers=48, max_window_layers=48),
    # CPU sizes for tests, toy runs and benchmarks.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        max_window_layers=2,
    ),
    "small": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        max_window_layers=4,
    ),
    "bench": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        max_window_layers=4,
    ),
}
