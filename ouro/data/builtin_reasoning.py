"""Built-in offline conversations for the tiny SFT and mid-training stages.

Chains of modular assignments (`ouro.data.synthetic`) become ChatML conversations whose assistant turn reasons
inside ``<think>...</think>`` (one resolved statement per hop) before giving the answer. They are generated,
tokenized with the built-in tokenizer and prepared on first use, under the same cache as the built-in corpus:

* ``format: sft`` — packed conversations with assistant-only labels (Reasoning SFT);
* ``format: pretrain`` — the same conversations rendered as ChatML text documents (mid-training's SFT-style data).

Registered as the built-in source ``builtin-reasoning`` (`ouro.data.builtin_sources`): name it in the ``sources``
of an `SFTDataModule` or a `PretrainDataModule`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ouro.atomic import atomic_write_text
from ouro.chat import format_chat
from ouro.data.builtin import builtin_tokenizer_path
from ouro.data.cache import cache_dir
from ouro.data.prepare import prepare
from ouro.data.synthetic import make_example

_VERSION = 1
_SIZES = {"train": 6000, "val": 200}
_SYSTEM = "Resolve the variable. Arithmetic is modulo 10."


def reasoning_trace(prompt: str, modulus: int = 10) -> str:
    """The hop-by-hop resolution of a chain prompt such as ``q=c+3 c=7 h=q*2 ? h =``."""
    statements = dict(s.split("=", 1) for s in prompt.split(" ? ")[0].split())
    values: dict[str, int] = {}
    lines = []
    while len(values) < len(statements):
        for name, expr in statements.items():
            if name in values:
                continue
            match = re.fullmatch(r"([a-z])([+\-*])(\d+)", expr)
            if match is None:
                values[name] = int(expr)
                lines.append(f"{name}={expr}")
            elif match.group(1) in values:
                left, op, right = values[match.group(1)], match.group(2), int(match.group(3))
                values[name] = {"+": left + right, "-": left - right, "*": left * right}[op] % modulus
                lines.append(f"{name}={left}{op}{right}={values[name]}")
    return " ".join(lines)


def conversations(split: str, seed: int = 0) -> list[list[dict[str, str]]]:
    """Deterministic conversations of 1 to 4 hops; the splits use different seeds."""
    rng = random.Random(seed * 2 + (split == "val"))
    result = []
    for _ in range(_SIZES[split]):
        example = make_example(rng, rng.randint(1, 4))
        answer = f"<think>{reasoning_trace(example.prompt)}</think>{example.answer}"
        result.append(
            [
                {"role": "system", "content": _SYSTEM},
                {"role": "user", "content": example.prompt},
                {"role": "assistant", "content": answer},
            ]
        )
    return result


def ensure_reasoning_shards(format: str, seq_len: int = 256) -> dict[str, Path]:
    """Prepared ``{"train": ..., "val": ...}`` shard folders of the built-in conversations (built on first use)."""
    root = cache_dir() / f"reasoning-v{_VERSION}"
    name = f"sft-{seq_len}" if format == "sft" else "text"
    out = {}
    for split in ("train", "val"):
        jsonl = root / f"{split}.{format}.jsonl"
        if not jsonl.is_file():
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            rows = conversations(split)
            lines = [
                json.dumps(
                    {"messages": m}
                    if format == "sft"
                    else {"text": format_chat(m, add_generation_prompt=False)}
                )
                for m in rows
            ]
            atomic_write_text(jsonl, "\n".join(lines) + "\n")
        target = root / f"{name}-{split}"
        if not (target / "manifest.json").is_file():
            prepare(
                str(jsonl),
                str(target),
                tokenizer=str(builtin_tokenizer_path()),
                format=format,
                seq_len=seq_len,
                num_workers=1,
                chunk_tokens=1 << 16,
            )
        out[split] = target
    return out
