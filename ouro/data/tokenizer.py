"""Load a tokenizer (local ``tokenizer.json``, a folder holding one, or a Hub repo id), hash it, find its EOS."""

from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import hf_hub_download
from tokenizers import Tokenizer

from ouro.data.builtin import builtin_tokenizer_path
from ouro.errors import DataError
from ouro.hub_ids import is_hub_repo_id

#: Ouro's tokenizer (SmolLM2): 49,152 tokens, ``<|endoftext|>`` = 0.
OURO_TOKENIZER = "HuggingFaceTB/SmolLM2-135M"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def resolve_tokenizer_file(name_or_path: str | Path) -> Path:
    """Path of the ``tokenizer.json`` behind a file, a folder, ``builtin``, or a Hub repo id (downloaded)."""
    name = str(name_or_path)
    if name == "builtin":
        return builtin_tokenizer_path()
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return path / "tokenizer.json"
        raise FileNotFoundError(
            f"{path} is a folder without tokenizer.json; point at a tokenizer.json file or a "
            "folder that holds one"
        )
    if not is_hub_repo_id(name):
        raise FileNotFoundError(
            f"tokenizer {name!r} does not exist; give a tokenizer.json, a folder holding one, "
            f"'builtin', or a Hub repo id such as {OURO_TOKENIZER}"
        )
    try:
        return Path(hf_hub_download(repo_id=name, filename="tokenizer.json"))
    except Exception as err:  # offline, unknown repo, gated repo ...
        raise FileNotFoundError(
            f"could not fetch tokenizer.json of Hub repo {name!r} ({type(err).__name__}: {err}); "
            "without network, pass a local tokenizer.json or 'builtin'"
        ) from None


def load_tokenizer(name_or_path: str | Path):
    """A ``tokenizers.Tokenizer`` from a file, folder, ``builtin`` or Hub repo id."""
    path = resolve_tokenizer_file(name_or_path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:
        raise DataError(f"{path} is not a valid tokenizer.json ({err})") from None


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical JSON: equal hashes mean identical tokenization."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def eos_token_id(tokenizer) -> int:
    """Id of the end-of-document token (``<|endoftext|>`` for SmolLM2 and the built-in tokenizer)."""
    for token in EOS_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise DataError(
        f"the tokenizer has none of the end-of-document tokens {EOS_CANDIDATES}; add one as a special token"
    )
