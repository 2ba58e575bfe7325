"""ChatML rendering of a conversation into token ids plus a mask of the tokens that train (assistant turns).

``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message. Trained: the content of every assistant message and
its ``<|im_end|>`` (the model must learn to stop); never the headers, the system or user turns. Reasoning belongs
inside the assistant content as ``<think>...</think>``; a separate ``reasoning_content`` field is rendered that way.
"""

from __future__ import annotations

from typing import Any

from ouro.data.errors import DataError
from ouro.data.tokenizer import chat_token_ids

ROLES = ("system", "user", "assistant")


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


class ChatRenderer:
    """Renders validated conversations with one tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.im_start, self.im_end = chat_token_ids(tokenizer)
        self.newline = self._encode("\n")
        self.headers = {role: [self.im_start, *self._encode(f"{role}\n")] for role in ROLES}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 mask (1 = an assistant token the loss counts)."""
        ids: list[int] = []
        mask: list[int] = []
        for message in messages:
            trained = int(message["role"] == "assistant")
            body = [*self._encode(message["content"]), self.im_end]
            header = self.headers[message["role"]]
            ids += header + body + self.newline
            mask += [0] * len(header) + [trained] * len(body) + [0] * len(self.newline)
        return ids, mask
