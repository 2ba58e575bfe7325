"""Tokenizer files of an export: ``tokenizer.json``, ``tokenizer_config.json`` (with the ChatML template) and
``special_tokens_map.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ouro.chat import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START
from ouro.data.tokenizer import resolve_tokenizer_file

__all__ = ["resolve_tokenizer_file", "special_token_ids", "write_tokenizer_files"]


def special_token_ids(tokenizer_file: str | Path) -> dict[str, int | None]:
    """Ids of ``<|endoftext|>``, ``<|im_start|>`` and ``<|im_end|>`` (None where the vocabulary lacks one)."""

    tok = Tokenizer.from_file(str(tokenizer_file))
    return {name: tok.token_to_id(name) for name in (END_OF_TEXT, IM_START, IM_END)}


def write_tokenizer_files(
    tokenizer_file: str | Path, directory: str | Path, max_length: int
) -> dict[str, Any]:
    """Copy ``tokenizer.json`` and write the transformers configuration files; returns the special token ids
    (``bos_token_id``, ``eos_token_id``, ``pad_token_id``) that config.json and generation_config.json use."""

    directory = Path(directory)
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.save(str(directory / "tokenizer.json"))
    ids = special_token_ids(tokenizer_file)
    # ChatML models end a turn with <|im_end|>; documents end with <|endoftext|>, which also serves as padding.
    eos = IM_END if ids[IM_END] is not None else END_OF_TEXT if ids[END_OF_TEXT] is not None else None
    pad = END_OF_TEXT if ids[END_OF_TEXT] is not None else eos
    bos = IM_START if ids[IM_START] is not None else None
    added = {
        str(i): {
            "content": t.content,
            "special": t.special,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "single_word": t.single_word,
        }
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML_TEMPLATE,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": None,
        "model_max_length": max_length,
        "padding_side": "left",  # batched generation with a decoder-only model
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {
        k: v for k, v in {"bos_token": bos, "eos_token": eos, "pad_token": pad}.items() if v is not None
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return {
        "bos_token_id": ids.get(bos) if bos else None,
        "eos_token_id": ids.get(eos) if eos else None,
        "pad_token_id": ids.get(pad) if pad else None,
        "end_of_text_id": ids[END_OF_TEXT],
    }
