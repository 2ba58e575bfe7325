"""Blocks of ``seq_len + 1`` tokens -> batches of the batch contract (``input_ids``, ``labels``, ``doc_ids``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


def doc_ids_from_eos(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Number the documents of each row: a token right after an EOS starts a new document (the EOS itself
    still belongs to the document it ends). Non-decreasing, starting at 0 in every row."""
    starts = torch.zeros_like(input_ids)
    starts[:, 1:] = (input_ids[:, :-1] == eos_id).long()
    return starts.cumsum(1)


def blocks_to_batch(blocks: torch.Tensor, eos_id: int, sft: bool = False, doc_masking: bool = True) -> dict:
    """Turn (B, seq_len + 1) blocks into a training batch.

    Pretraining blocks hold token ids; ``labels`` are the next tokens, except that with ``doc_masking`` the
    prediction made at an EOS (the first token of the next, unrelated document) does not count. SFT blocks hold
    ``id * 2 + trained``: labels are -100 wherever the next token is not an assistant token.
    """
    blocks = blocks.long()
    if sft:
        ids, trained = blocks >> 1, (blocks & 1).bool()
        input_ids, labels = ids[:, :-1], ids[:, 1:].clone()
        labels[~trained[:, 1:]] = IGNORE_INDEX
    else:
        input_ids, labels = blocks[:, :-1], blocks[:, 1:].clone()
        if doc_masking:
            labels[input_ids == eos_id] = IGNORE_INDEX
    batch = {"input_ids": input_ids.contiguous(), "labels": labels}
    if doc_masking:
        batch["doc_ids"] = doc_ids_from_eos(input_ids, eos_id)
    return batch


@dataclass
class BlockCollate:
    """Picklable collate function for loader workers: samples are ``{"tokens", "source"}`` dicts."""

    eos_id: int
    sft: bool = False
    doc_masking: bool = True

    def __call__(self, samples: list[dict]) -> dict:
        # uint16 or int32 shards: the model gets int64 either way
        blocks = torch.from_numpy(np.stack([np.asarray(s["tokens"]) for s in samples]).astype(np.int64))
        batch = blocks_to_batch(blocks, self.eos_id, self.sft, self.doc_masking)
        batch["source"] = torch.tensor([int(s["source"]) for s in samples])
        return batch
