"""ChatML, the conversation format of Ouro, written once: special tokens, the exported template, rendering.

A conversation is ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; a prompt for the model's reply ends
with ``<|im_start|>assistant\\n``. Three views of the same format live here:

* `CHATML_TEMPLATE`, the Jinja template written into an export's ``tokenizer_config.json`` (for transformers and
  vLLM);
* `format_chat`, the same text without Jinja;
* `ChatRenderer`, the same tokens built from the special-token ids and the encoded pieces: SFT data (with the mask
  of the tokens that train) and ``ouro generate --chat`` (the prompt) both render through it.
"""

from __future__ import annotations

from ouro.errors import DataError

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
#: The special tokens of a ChatML tokenizer, in the order the built-in tokenizer numbers them (0, 1, 2).
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
#: The tokens that delimit a turn.
CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

#: Jinja chat template of the export; `format_chat` renders the same text without Jinja.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def format_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]`` as ChatML text, optionally opening the assistant's turn."""
    parts = []
    for message in messages:
        if "role" not in message or "content" not in message:
            raise ValueError(f"chat messages need 'role' and 'content', got {message!r}")
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def chat_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of ``<|im_start|>`` and ``<|im_end|>`` in a `tokenizers.Tokenizer`; `DataError` if it lacks them."""
    ids = [tokenizer.token_to_id(t) for t in CHAT_TOKENS]
    if None in ids:
        raise DataError(
            f"the tokenizer lacks the ChatML special tokens {CHAT_TOKENS}; use a chat tokenizer "
            "(e.g. HuggingFaceTB/SmolLM2-135M or 'builtin')"
        )
    return ids[0], ids[1]


class ChatRenderer:
    """ChatML token ids of conversations, with one `tokenizers.Tokenizer`.

    The ids equal the tokenizer's encoding of `format_chat`'s text; they are built piece by piece so the special
    tokens are always single ids and the assistant tokens are known exactly.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.im_start, self.im_end = chat_token_ids(tokenizer)
        self.newline = self._encode("\n")
        self.headers = {role: [self.im_start, *self._encode(f"{role}\n")] for role in ROLES}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _header(self, role: str) -> list[int]:
        if role not in self.headers:  # roles beyond the three of SFT data (e.g. "tool" at inference)
            self.headers[role] = [self.im_start, *self._encode(f"{role}\n")]
        return self.headers[role]

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 mask: 1 on what the loss counts, the content of every assistant message and its
        ``<|im_end|>`` (the model must learn to stop); 0 on headers, newlines and the other turns."""
        ids: list[int] = []
        mask: list[int] = []
        for message in messages:
            trained = int(message["role"] == "assistant")
            body = [*self._encode(message["content"]), self.im_end]
            header = self._header(message["role"])
            ids += header + body + self.newline
            mask += [0] * len(header) + [trained] * len(body) + [0] * len(self.newline)
        return ids, mask

    def render_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the opened assistant turn: what generation continues."""
        return self.render(messages)[0] + self.headers["assistant"]
