"""``ouro prepare``: tokenize text / JSONL / parquet / Hub data into litdata token shards plus a manifest.

The same inputs and settings always give the same bytes, whatever the number of workers or machines and however
they are scheduled: the input files are grouped into units, each unit is tokenized by one worker into chunks of
its own (`ouro.data.shards`), and the merge lists the chunks in unit order. Work and chunks go to a hidden staging
folder (or under the URL for object storage, `ouro.data.staging`); ``manifest.json`` is written last and a local
folder is renamed into place only then, so an interrupted prepare never leaves a folder that looks complete and a
rerun continues with the units that are not done. Across machines, every node writes its share of the units and
the last one to finish writes the index and the manifest (`ouro.data.nodes` reads node rank and count).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ouro.chat import chat_token_ids
from ouro.child_processes import die_with_parent
from ouro.data import remote
from ouro.data.cache import cache_dir, local_path, portable_path
from ouro.data.chat import ChatRenderer, validate_conversation
from ouro.data.manifest import MANIFEST, Manifest
from ouro.data.nodes import node_split
from ouro.data.readers import ReadStats, expand_inputs, input_size, input_stamp, read_records, read_texts
from ouro.data.segments import is_segments, render_segments, validate_segments
from ouro.data.shards import ChunkWriter, Unit, assign_units, index_text, plan_units, token_dtype
from ouro.data.staging import LocalStaging, RemoteStaging, unit_record_name
from ouro.data.tokenizer import (
    OURO_TOKENIZER,
    eos_token_id,
    load_tokenizer,
    resolve_tokenizer_file,
    tokenizer_hash,
)
from ouro.errors import NO_SPACE, DataError, PreparedOtherwiseError, WriteError, free_bytes, human_bytes

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
    dtype: str
    chunk_tokens: int
    parent_pid: int | None = None


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        tokenizer = load_tokenizer(path)
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a boundary
        _TOKENIZERS[path] = tokenizer
    return _TOKENIZERS[path]


def _pretrain_arrays(job: _Job, path: str, stats: ReadStats, counts: dict):

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
        return np.asarray(ids, dtype=job.dtype)

    for text in read_texts(path, job.field, job.skip_bad, stats):
        batch.append(text)
        if len(batch) == 256:
            yield flush()
    if batch:
        yield flush()


def _sft_arrays(job: _Job, path: str, stats: ReadStats, counts: dict):
    """Greedy in-order packing of whole conversations into blocks of ``block_size`` (value = id * 2 + trained)."""

    renderer = ChatRenderer(_tokenizer(job.tokenizer_file))
    block: list[int] = []
    pad = job.eos * 2  # padding: EOS tokens that do not train, each its own empty document

    def close_block():
        out = np.asarray(block + [pad] * (job.block_size - len(block)), dtype=job.dtype)
        counts["tokens"] += job.block_size
        block.clear()
        return out

    for record, where in read_records(path, job.field, job.skip_bad, stats):
        try:
            if is_segments(record):
                ids, mask = render_segments(renderer.tokenizer, validate_segments(record, where))
            else:
                ids, mask = renderer.render(validate_conversation(record, where))
        except DataError as err:
            if not job.skip_bad:
                raise DataError(
                    f"{err}; fix or remove it, or pass --skip_bad true to skip bad records"
                ) from None
            stats.skipped += 1
            continue
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


def _write_unit(job: _Job, unit: Unit, staging) -> dict:
    """Tokenize one unit into its chunks, publish them, then its record (which marks the unit done)."""
    stats = ReadStats()
    counts = {"documents": 0, "tokens": 0, "truncated": 0}
    arrays = _pretrain_arrays if job.format == "pretrain" else _sft_arrays
    writer = ChunkWriter(staging.chunk_dir, unit.index, job.chunk_tokens, job.dtype)
    published = 0
    for path in unit.files:
        for array in arrays(job, path, stats, counts):
            if job.parent_pid is not None and os.getppid() != job.parent_pid:
                os._exit(1)  # the prepare was killed: do not go on alone
            writer.add(array)
            for chunk in writer.chunks[published:]:
                staging.publish_chunk(chunk["filename"])
            published = len(writer.chunks)
    for chunk in writer.close()[published:]:
        staging.publish_chunk(chunk["filename"])
    record = {"unit": unit.index, "files": list(unit.files), "chunks": writer.chunks, **counts}
    record["skipped"] = stats.skipped
    staging.write_record(unit_record_name(unit.index), json.dumps(record, sort_keys=True))
    return record


def _run_units(job: _Job, units: list[Unit], staging, workers: int) -> None:
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            _write_unit(job, unit, staging)
        return

    job = _Job(**{**asdict(job), "parent_pid": os.getpid()})
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        # An idle worker would wait on its task queue forever once the prepare is gone.
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futures = [pool.submit(_write_unit, job, unit, staging) for unit in units]
        for future in futures:
            future.result()
    except BrokenProcessPool:
        raise DataError(
            f"a tokenizing worker died (killed, or out of memory); the units already written are kept in "
            f"{staging.describe()} and a rerun with the same arguments continues from them"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _done_records(staging, units: list[Unit]) -> dict[int, dict]:
    """Records of the units that are complete (all their chunks present)."""
    done = {}
    for text in staging.records().values():
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        unit = record.get("unit")
        if isinstance(unit, int) and unit < len(units) and record.get("files") == list(units[unit].files):
            if all(staging.has_chunk(c) for c in record["chunks"]):
                done[unit] = record
    return done


def _bytes_per_input_byte(done: dict[int, dict], units: list[Unit], dtype: str) -> float:
    written = sum(c["chunk_bytes"] for r in done.values() for c in r["chunks"])
    read = sum(units[u].bytes for u in done)
    return written / read if read else {"uint16": 2, "int32": 4}[dtype] / 4  # about 4 bytes of text per token


def _os_error(err: OSError, staging, units: list[Unit], dtype: str) -> WriteError:
    """One line for a full disk or another OS error: the path, the space needed, and what is intact."""
    done = _done_records(staging, units)
    kept = (
        f"the {len(done)} units finished are kept in {staging.describe()} and a rerun with the same arguments "
        f"continues from them; no {MANIFEST} was written"
    )
    where = err.filename or staging.describe()
    if err.errno in NO_SPACE:
        left = sum(u.bytes for u in units if u.index not in done)
        need = left * _bytes_per_input_byte(done, units, dtype)
        return WriteError(
            f"no space left on the device writing {where}: the remaining {len(units) - len(done)} of {len(units)} "
            f"units need about {human_bytes(need)} more; free space there, then rerun ({kept})",
            err.errno,
        )
    return WriteError(f"{where}: {err.strerror or err} while preparing; {kept}", err.errno)


def _warn_if_short_of_space(folder: Path, units: list[Unit], dtype: str) -> None:
    need = sum(u.bytes for u in units) * _bytes_per_input_byte({}, units, dtype)
    free = free_bytes(folder)
    if free is not None and free < need:
        print(
            f"warning: {folder} has {human_bytes(free)} free; the shards need about {human_bytes(need)} (estimated)"
        )


def _check_existing(staging, key: dict, overwrite: bool) -> Manifest | None:
    """The manifest of an identical finished prepare (nothing to do), else None; refuses to clobber."""
    text = staging.finished_manifest()
    if text is None:
        staging.check_replaceable()
        return None
    manifest = Manifest.from_text(text, f"{staging.output}/{MANIFEST}")
    if overwrite:
        return None
    fields = asdict(manifest)
    recorded = {name: fields[name] for name in key}
    # Sources inside $OURO_CACHE compare by where they are now (manifests of older versions hold absolute paths).
    recorded["sources"] = [local_path(s) for s in manifest.sources]
    if recorded != {**key, "sources": [local_path(s) for s in key["sources"]]}:
        raise PreparedOtherwiseError(
            f"{staging.output} was prepared from other inputs or settings (see {staging.output}/{MANIFEST}); "
            "pass --overwrite true to redo it, or choose another output_dir"
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
    num_nodes: int | Literal["env"] = 1,
    node_rank: int = 0,
) -> Manifest | None:
    """Tokenize documents into litdata token shards with a manifest; the same inputs give the same bytes.

    Args:
        inputs: A file, folder or glob, or a list of them ("[a.jsonl, data/]"): files, folders, globs of .txt / .jsonl / .jsonl.gz / .parquet, or Hub data sets as hf://org/name (streamed, not downloaded whole).
        output_dir: Folder, or s3:// / gs:// URL, for the shards and manifest.json (written last, once everything succeeded).
        tokenizer: tokenizer.json, a folder holding one, a Hub repo id, or 'builtin' (the offline tokenizer).
        format: 'pretrain': documents, each ending with EOS. 'sft': ChatML conversations ('messages') or text segments with train flags ('segments', no chat template), packed.
        text_field: JSONL / parquet field to read (default 'text', or 'messages' for sft). A .txt file is one document.
        seq_len: sft only: sequence length the conversations are packed for (blocks of seq_len + 1 tokens).
        num_workers: Tokenizing processes on this machine (default: one per CPU, at most one per unit of work).
        chunk_tokens: Tokens per shard file; input files are grouped into units of at least this many bytes, each tokenized by one worker.
        skip_bad: Skip bad records (and unreadable files) and count them instead of stopping at the first.
        overwrite: Redo an output_dir that an earlier prepare wrote (possibly from other inputs); never replaces a folder that no prepare wrote.
        num_nodes: Machines sharing this prepare (output_dir must be storage they all reach), or 'env': read node count and rank from OURO_NUM_NODES / OURO_NODE_RANK, a SLURM job array, or litdata's DATA_OPTIMIZER_NUM_NODES / DATA_OPTIMIZER_NODE_RANK.
        node_rank: This machine's index among num_nodes (0 .. num_nodes - 1; ignored with num_nodes 'env').
    """
    field = text_field or ("messages" if format == "sft" else "text")
    if format not in ("pretrain", "sft"):
        raise DataError(f"format must be 'pretrain' or 'sft', got {format!r}")
    if seq_len < 1 or chunk_tokens < 1:
        raise DataError(f"seq_len and chunk_tokens must be positive, got {seq_len} and {chunk_tokens}")
    nodes, rank = node_split(num_nodes, node_rank)
    files = expand_inputs([inputs] if isinstance(inputs, str) else inputs)
    tokenizer_file = resolve_tokenizer_file(tokenizer)
    tok = load_tokenizer(tokenizer_file)
    eos = eos_token_id(tok)
    if format == "sft":
        chat_token_ids(tok)
    block_size = seq_len + 1 if format == "sft" else None
    dtype = token_dtype(tok.get_vocab_size(), format)
    chunk = chunk_tokens if format == "pretrain" else max(1, chunk_tokens // block_size) * block_size
    if remote.is_remote(output_dir):
        output: str | Path = remote.litdata_url(output_dir)
        digest = remote.cache_dir(output_dir).name
        staging = RemoteStaging(output, cache_dir() / "prepare" / digest / f"node-{rank}")
    else:
        output = Path(output_dir).expanduser().resolve()
        staging = LocalStaging(output)
    key = dict(
        format=format,
        tokenizer_hash=tokenizer_hash(tok),
        sources=[portable_path(f) for f in files],  # a cache that moves stays valid
        block_size=block_size,
        text_field=field,
    )
    done = _check_existing(staging, key, overwrite)
    if done is not None:
        print(
            f"{output} is already prepared ({done.documents} documents, {done.tokens} tokens); nothing to do"
        )
        return done

    units = plan_units(files, [input_size(f) for f in files], chunk_tokens)
    plan = json.dumps(
        {
            **key,
            "chunk_tokens": chunk,
            "token_dtype": dtype,
            "skip_bad": skip_bad,
            "units": [u.files for u in units],
            "inputs": [input_stamp(f) for f in files],  # a changed input makes the finished units stale
        },
        sort_keys=True,
    )
    job = _Job(str(tokenizer_file), format, field, skip_bad, block_size or 0, eos, dtype, chunk)
    mine = assign_units(units, nodes)[rank]
    try:
        staging.start(plan, exclusive=nodes == 1)
        if isinstance(staging, LocalStaging):
            _warn_if_short_of_space(output.parent, [units[u] for u in mine], dtype)
        finished = _done_records(staging, units)
        pending = [units[u] for u in mine if u not in finished]
        workers = max(1, min(num_workers or os.cpu_count() or 1, len(pending)))
        _run_units(job, pending, staging, workers)
        finished = _done_records(staging, units)
    except OSError as err:
        raise _os_error(err, staging, units, dtype) from None
    except DataError:
        if nodes == 1:  # bad input: the fix changes the inputs, so nothing here is reusable
            staging.discard()
        raise
    if len(finished) < len(units):
        print(
            f"node {rank} of {nodes}: {len(mine)} units written to {staging.describe()}; {len(units) - len(finished)}"
            " units remain for the other nodes, and the last node to finish writes the manifest"
        )
        return None
    if not staging.try_lock_merge():
        print(f"node {rank} of {nodes}: another node is writing the manifest of {output}")
        return None
    return _merge(staging, finished, key, tokenizer, tokenizer_file, tok, eos, dtype, chunk, units)


def _merge(staging, records, key, tokenizer, tokenizer_file, tok, eos, dtype, chunk, units) -> Manifest:
    ordered = [records[u] for u in sorted(records)]
    totals = {name: sum(r[name] for r in ordered) for name in ("documents", "tokens", "truncated", "skipped")}
    if totals["documents"] == 0:
        if isinstance(staging, LocalStaging):
            shutil.rmtree(staging.folder, ignore_errors=True)
        raise DataError(
            f"the inputs {key['sources']} hold no documents"
            + (f" ({totals['skipped']} bad records skipped)" if totals["skipped"] else "")
        )
    manifest = Manifest(
        format=key["format"],
        tokenizer=portable_path(tokenizer) if Path(str(tokenizer)).exists() else str(tokenizer),
        tokenizer_hash=key["tokenizer_hash"],
        vocab_size=tok.get_vocab_size(),
        eos_token_id=eos,
        documents=totals["documents"],
        tokens=totals["tokens"],
        skipped=totals["skipped"],
        sources=key["sources"],
        block_size=key["block_size"],
        truncated=totals["truncated"],
        text_field=key["text_field"],
        token_dtype=dtype,
        chunk_tokens=chunk,
    )
    chunks = [c for r in ordered for c in r["chunks"]]
    try:
        staging.finish(index_text(chunks, chunk, dtype), tokenizer_file, manifest.to_json())
    except OSError as err:
        raise _os_error(err, staging, units, dtype) from None
    report = f"prepared {staging.output}: {manifest.documents} documents, {manifest.tokens} tokens ({dtype})"
    if manifest.skipped:
        report += f", {manifest.skipped} bad records skipped"
    if manifest.truncated:
        report += f", {manifest.truncated} conversations truncated to {key['block_size']} tokens"
    print(report)
    return manifest
