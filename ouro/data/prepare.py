"""``ouro prepare``: tokenize text / JSONL / parquet / Hub data into litdata token shards plus a manifest.

The shards are written by several worker processes (``litdata.optimize``) into a hidden staging folder next to
``output_dir``; the manifest is written last and the folder is renamed into place, so an interrupted prepare never
leaves a folder that looks complete, and rerunning starts the staging folder afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from ouro.data.errors import DataError
from ouro.data.manifest import MANIFEST, Manifest
from ouro.data.readers import ReadStats, expand_inputs, read_records, read_texts
from ouro.data.tokenizer import (
    OURO_TOKENIZER,
    eos_token_id,
    load_tokenizer,
    resolve_tokenizer_file,
    tokenizer_hash,
)

_TOKENIZERS: dict[str, object] = {}


@dataclass(frozen=True)
class _Job:
    """What every worker needs (picklable)."""

    tokenizer_file: str
    format: str
    field: str
    skip_bad: bool
    block_size: int
    eos: int
    work_dir: str


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        tokenizer = load_tokenizer(path)
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a boundary
        _TOKENIZERS[path] = tokenizer
    return _TOKENIZERS[path]


def _record(job: _Job, kind: str, path: str, payload: dict) -> None:
    name = hashlib.sha1(path.encode()).hexdigest() + ".json"
    target = Path(job.work_dir) / kind
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_text(json.dumps({"path": path, **payload}))


def _pretrain_arrays(job: _Job, path: str, stats: ReadStats, counts: dict):
    import numpy as np

    tokenizer = _tokenizer(job.tokenizer_file)
    batch: list[str] = []

    def flush():
        ids = []
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids += encoding.ids
            ids.append(job.eos)
        counts["documents"] += len(batch)
        counts["tokens"] += len(ids)
        batch.clear()
        return np.asarray(ids, dtype=np.int32)

    for text in read_texts(path, job.field, job.skip_bad, stats):
        batch.append(text)
        if len(batch) == 256:
            yield flush()
    if batch:
        yield flush()


def _sft_arrays(job: _Job, path: str, stats: ReadStats, counts: dict):
    """Greedy in-order packing of whole conversations into blocks of ``block_size`` (value = id * 2 + trained)."""
    import numpy as np

    from ouro.data.chat import ChatRenderer, validate_conversation

    renderer = ChatRenderer(_tokenizer(job.tokenizer_file))
    block: list[int] = []
    pad = job.eos * 2  # padding: EOS tokens that do not train, each its own empty document

    def close_block():
        out = np.asarray(block + [pad] * (job.block_size - len(block)), dtype=np.int32)
        counts["tokens"] += job.block_size
        block.clear()
        return out

    for messages, where in read_records(path, job.field, job.skip_bad, stats):
        try:
            messages = validate_conversation(messages, where)
        except DataError as err:
            if not job.skip_bad:
                raise DataError(
                    f"{err}; fix or remove it, or pass --skip_bad true to skip bad records"
                ) from None
            stats.skipped += 1
            continue
        ids, mask = renderer.render(messages)
        values = [i * 2 + m for i, m in zip(ids, mask)] + [job.eos * 2]
        if len(values) > job.block_size:  # truncation policy: keep the head, end with EOS
            values = values[: job.block_size - 1] + [job.eos * 2]
            counts["truncated"] += 1
        if len(block) + len(values) > job.block_size:
            yield close_block()
        block += values
        counts["documents"] += 1
    if block:
        yield close_block()


def _process_file(job: _Job, path: str):
    """litdata worker function: token arrays of one input file; stats and errors go to the work folder."""
    stats = ReadStats()
    counts = {"documents": 0, "tokens": 0, "truncated": 0}
    arrays = _pretrain_arrays if job.format == "pretrain" else _sft_arrays
    try:
        yield from arrays(job, str(path), stats, counts)
    except DataError as err:
        _record(job, "errors", str(path), {"message": str(err)})
        raise
    _record(job, "stats", str(path), {**counts, "skipped": stats.skipped})


def _existing(output: Path, manifest_args: dict, overwrite: bool) -> Manifest | None:
    """The manifest of an identical finished prepare (nothing to do), else None; refuses to clobber."""
    if not output.exists():
        return None
    if overwrite:
        return None
    if not (output / MANIFEST).is_file():
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
            return None
        raise DataError(
            f"{output} exists and is not a finished prepare (no {MANIFEST}); remove it or pass "
            "--overwrite true"
        )
    manifest = Manifest.load(output)
    same = all(getattr(manifest, key) == value for key, value in manifest_args.items())
    if not same:
        raise DataError(
            f"{output} was prepared from other inputs or settings (see {output / MANIFEST}); pass "
            "--overwrite true to redo it, or choose another output_dir"
        )
    return manifest


def prepare(
    inputs: list[str] | str,
    output_dir: str,
    tokenizer: str = OURO_TOKENIZER,
    format: Literal["pretrain", "sft"] = "pretrain",
    text_field: str | None = None,
    seq_len: int = 4096,
    num_workers: int | None = None,
    chunk_tokens: int = 1 << 24,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> Manifest:
    """Tokenize documents into litdata token shards with a manifest.

    Args:
        inputs: A file, folder or glob, or a list of them ("[a.jsonl, data/]"): files, folders, globs of .txt / .jsonl / .jsonl.gz / .parquet, or Hub data sets as hf://org/name.
        output_dir: Folder for the shards and manifest.json (written atomically when everything succeeded).
        tokenizer: tokenizer.json, a folder holding one, a Hub repo id, or 'builtin' (the offline tokenizer).
        format: 'pretrain': documents, each ending with EOS. 'sft': ChatML conversations ('messages'), packed.
        text_field: JSONL / parquet field to read (default 'text', or 'messages' for sft). A .txt file is one document.
        seq_len: sft only: sequence length the conversations are packed for (blocks of seq_len + 1 tokens).
        num_workers: Tokenizing processes (default: one per CPU, at most one per file).
        chunk_tokens: Tokens per shard file (pretrain); large chunks waste less at block cuts.
        skip_bad: Skip bad records (and unreadable files) and count them instead of stopping at the first.
        overwrite: Redo an output_dir that was already prepared (possibly from other inputs).
    """
    from litdata import TokensLoader, optimize

    field = text_field or ("messages" if format == "sft" else "text")
    if format not in ("pretrain", "sft"):
        raise DataError(f"format must be 'pretrain' or 'sft', got {format!r}")
    if seq_len < 1 or chunk_tokens < 1:
        raise DataError(f"seq_len and chunk_tokens must be positive, got {seq_len} and {chunk_tokens}")
    files = expand_inputs([inputs] if isinstance(inputs, str) else inputs)
    tokenizer_file = resolve_tokenizer_file(tokenizer)
    tok = load_tokenizer(tokenizer_file)
    eos = eos_token_id(tok)
    if format == "sft":
        from ouro.data.tokenizer import chat_token_ids

        chat_token_ids(tok)
    block_size = seq_len + 1 if format == "sft" else None
    output = Path(output_dir).expanduser().resolve()
    key = dict(
        format=format,
        tokenizer_hash=tokenizer_hash(tok),
        sources=[str(f) for f in files],
        block_size=block_size,
        text_field=field,
    )
    done = _existing(output, key, overwrite)
    if done is not None:
        print(
            f"{output} is already prepared ({done.documents} documents, {done.tokens} tokens); nothing to do"
        )
        return done

    staging = output.parent / f".{output.name}.incomplete"
    work = output.parent / f".{output.name}.work"
    for folder in (staging, work):
        shutil.rmtree(folder, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(str(tokenizer_file), format, field, skip_bad, block_size or 0, eos, str(work))
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(files)))
    chunk = chunk_tokens if format == "pretrain" else max(1, chunk_tokens // block_size) * block_size
    env = {
        "DATA_OPTIMIZER_CACHE_FOLDER": str(work / "cache" / "chunks"),
        "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(work / "cache" / "data"),
    }
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        optimize(
            partial(_process_file, job),
            [str(f) for f in files],
            str(staging),
            chunk_size=chunk,
            item_loader=TokensLoader(),
            num_workers=workers,
            mode="overwrite",
            start_method="fork",
        )
    except Exception as err:
        errors = sorted((work / "errors").glob("*.json")) if (work / "errors").is_dir() else []
        shutil.rmtree(staging, ignore_errors=True)
        if errors:
            message = json.loads(errors[0].read_text())["message"]
            shutil.rmtree(work, ignore_errors=True)
            raise DataError(message) from None
        raise DataError(f"preparing {output} failed ({type(err).__name__}): {err}") from err
    finally:
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    totals = {"documents": 0, "tokens": 0, "truncated": 0, "skipped": 0}
    for stat in (work / "stats").glob("*.json") if (work / "stats").is_dir() else []:
        data = json.loads(stat.read_text())
        for name in totals:
            totals[name] += data[name]
    shutil.rmtree(work, ignore_errors=True)
    if totals["documents"] == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"the inputs {[str(f) for f in files]} hold no documents"
            + (f" ({totals['skipped']} bad records skipped)" if totals["skipped"] else "")
        )
    manifest = Manifest(
        format=format,
        tokenizer=str(tokenizer),
        tokenizer_hash=key["tokenizer_hash"],
        vocab_size=tok.get_vocab_size(),
        eos_token_id=eos,
        documents=totals["documents"],
        tokens=totals["tokens"],
        skipped=totals["skipped"],
        sources=key["sources"],
        block_size=block_size,
        truncated=totals["truncated"],
        text_field=field,
    )
    shutil.copyfile(tokenizer_file, staging / "tokenizer.json")  # ships with the data; export reads it
    manifest.save(staging)
    if output.exists():  # overwrite: the old folder goes only once the new one is complete
        old = output.parent / f".{output.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)
    report = f"prepared {output}: {manifest.documents} documents, {manifest.tokens} tokens"
    if manifest.skipped:
        report += f", {manifest.skipped} bad records skipped"
    if manifest.truncated:
        report += f", {manifest.truncated} conversations truncated to {block_size} tokens"
    print(report)
    return manifest
