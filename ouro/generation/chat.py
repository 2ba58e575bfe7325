"""The ChatML conversation format used by Ouro (and written into exported ``tokenizer_config.json``)."""

from __future__ import annotations

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

#: Jinja chat template of the export; `format_chat` renders the same text without Jinja.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def format_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]`` as ChatML, optionally opening the assistant's turn."""
    parts = []
    for message in messages:
        if "role" not in message or "content" not in message:
            raise ValueError(f"chat messages need 'role' and 'content', got {message!r}")
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
