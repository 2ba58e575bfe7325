"""`SFTDataModule`: ChatML conversations (mid-training SFT data, Reasoning SFT) from ``ouro prepare --format sft``.

Packing and truncation policy (fixed at prepare time): conversations are packed whole, in order, into blocks of
``seq_len + 1`` tokens; a conversation that does not fit in the current block starts the next one, the rest of the
block is padding (EOS tokens that never count). A conversation longer than a block keeps its head and is cut
to fit (counted as ``truncated`` in the manifest). Every conversation ends with EOS, so ``doc_ids`` keep
attention inside each conversation; only assistant tokens (content and ``<|im_end|>``) have labels.
"""

from __future__ import annotations

from ouro.data.pretrain import PretrainDataModule
from ouro.errors import DataError


class SFTDataModule(PretrainDataModule):
    """Packed ChatML conversations with assistant-only labels and per-conversation document masking.

    Same mixture, resume and logging machinery as `PretrainDataModule`; the shards must come from
    ``ouro prepare --format sft --seq_len N`` and ``seq_len`` must be that N (taken from the manifest by default).
    """

    format = "sft"

    def __init__(
        self,
        sources: list[str] | str,
        weights: list[float] | None = None,
        val_source: str | None = None,
        seq_len: int | None = None,
        batch_size: int = 1,
        num_workers: int = 1,
        seed: int = 42,
        shuffle: bool = True,
    ) -> None:
        """
        Args:
            sources: Shard folders written by ``ouro prepare --format sft``, or a built-in source with SFT data
                (``builtin-reasoning``, ``builtin-roots``; see `ouro.data.builtin_sources`).
            weights: Sampling weight of each source (normalised); default: proportional to their sizes.
            val_source: Shard folder of held-out conversations, a built-in source, or null.
            seq_len: Tokens per sequence; must match the prepared blocks (default: read from the manifest).
            batch_size: Micro-batch size per device.
            num_workers: Loader worker processes per device (resume needs the same value).
            seed: Shuffle and mixture seed.
            shuffle: Shuffle the packed blocks (validation never shuffles).
        """
        super().__init__(
            sources=sources,
            weights=weights,
            val_source=val_source,
            seq_len=seq_len or 1,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            shuffle=shuffle,
            doc_masking=True,
        )
        self.packed_seq_len = seq_len

    def _check_block_size(self) -> None:
        sizes = {m.block_size for m in self.manifests.values()}
        if len(sizes) != 1 or None in sizes:
            raise DataError(
                f"the SFT sources were packed for different sequence lengths {sorted(map(str, sizes))}; "
                "prepare them all with the same `ouro prepare --format sft --seq_len N`"
            )
        packed = sizes.pop() - 1
        if self.packed_seq_len is not None and self.packed_seq_len != packed:
            raise DataError(
                f"seq_len is {self.packed_seq_len} but the SFT shards were packed for seq_len {packed}; "
                f"set data.seq_len to {packed} or rerun `ouro prepare --format sft --seq_len "
                f"{self.packed_seq_len}`"
            )
        self.seq_len = packed
