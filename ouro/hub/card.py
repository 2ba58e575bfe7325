"""The model card (``README.md``) of an export: Hub metadata, architecture, provenance and usage."""

from __future__ import annotations

from typing import Any

from ouro.config import OuroConfig


def _tokens(n: int | float | None) -> str:
    if not n:
        return "-"
    n = float(n)
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"


def _metrics(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, (int, float)) else f"{key}={value}")
    return ", ".join(parts)


def model_card(
    config: OuroConfig,
    repo_name: str,
    provenance: list[dict[str, Any]],
    tokens_seen: int,
    source: str,
    num_parameters: int,
    dtype: str,
) -> str:
    """Markdown with YAML front matter for the Hub."""
    lines = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "pipeline_tag: text-generation",
        "tags:",
        "  - ouro",
        "  - looped-language-model",
        "  - early-exit",
        "---",
        "",
        f"# {repo_name}",
        "",
        f"A looped language model (Ouro / LoopLM architecture) trained with the open `ouro` toolkit: "
        f"{config.num_hidden_layers} shared layers run {config.total_ut_steps} times per token, with a learned "
        "exit gate after every pass.",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "|---|---|",
        f"| parameters | {num_parameters:,} |",
        f"| layers x recurrent steps | {config.num_hidden_layers} x {config.total_ut_steps} |",
        f"| hidden / FFN | {config.hidden_size} / {config.intermediate_size} |",
        f"| heads / KV heads / head dim | {config.num_attention_heads} / {config.num_key_value_heads} / "
        f"{config.head_dim} |",
        f"| vocabulary | {config.vocab_size} |",
        f"| RoPE base | {config.rope_theta:g} |",
        f"| default exit threshold q | {config.early_exit_threshold} |",
        f"| weights dtype | {dtype} |",
        "",
        "## Provenance",
        "",
    ]
    if provenance:
        lines += ["| # | stage | recipe | tokens | final metrics |", "|---|---|---|---|---|"]
        for i, entry in enumerate(provenance, start=1):
            lines.append(
                f"| {i} | {entry.get('stage', '-')} | {entry.get('recipe', '-')} | "
                f"{_tokens(entry.get('tokens'))} | {_metrics(entry.get('metrics'))} |"
            )
        lines.append("")
    else:
        lines += ["No stage record was stored with the weights.", ""]
    lines += [
        f"Tokens seen in total: {_tokens(tokens_seen)} ({tokens_seen:,}). Exported from `{source}`.",
        "",
    ]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_name}", trust_remote_code=True)',
        f'model = AutoModelForCausalLM.from_pretrained("{repo_name}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": "Hello!"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt',",
        "                                       return_dict=True)",
        "out = model.generate(**inputs, max_new_tokens=64, exit_threshold=0.9)",
        "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:]))",
        "```",
        "",
        "`exit_threshold` q is Q-exit: each token stops at the first pass whose cumulative exit probability "
        "reaches q (1.0 runs every pass); `exit_at_step` picks a fixed pass. While decoding, passes after the "
        "exit are skipped once every sequence in the batch has exited. With the `ouro` package: "
        f"`ouro generate {repo_name} 'Your prompt' --exit_threshold 0.9 --kv_sharing last`.",
        "",
        "The remote code (`modeling_ouro.py`, `configuration_ouro.py`) was written by the `ouro` toolkit and works "
        "with transformers >= 4.56, including batched generation with padding.",
        "",
    ]
    return "\n".join(lines)
