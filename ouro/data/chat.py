"""Conversations of SFT data: checked here, rendered to ChatML tokens by `ouro.chat.ChatRenderer`.

Trained: the content of every assistant message and its ``<|im_end|>`` (the model must learn to stop); never the
headers, the system or user turns. Reasoning belongs inside the assistant content as ``<think>...</think>``; a
separate ``reasoning_content`` field is rendered that way.
"""

from __future__ import annotations

from typing import Any

from ouro.chat import ROLES, ChatRenderer
from ouro.errors import DataError

__all__ = ["ChatRenderer", "validate_conversation"]


def validate_conversation(messages: Any, where: str) -> list[dict[str, str]]:
    """The messages of one conversation, or `DataError` naming ``where`` and what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} needs a role in {ROLES}")
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} ({message['role']}) has no text 'content'")
        reasoning = message.get("reasoning_content")
        if reasoning and message["role"] == "assistant":
            content = f"<think>\n{reasoning}\n</think>\n{content}"
        if message["role"] == "assistant" and content.count("<think>") != content.count("</think>"):
            raise DataError(f"{where}: message {i} has unbalanced <think> ... </think> tags")
        out.append({"role": message["role"], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant message, so nothing would train")
    return out
