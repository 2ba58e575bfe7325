"""A tiny deterministic in-memory DataModule following the batch contract (for CLI, stage and pipeline tests)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ouro.data.base import OuroDataModule


class _Patterns(Dataset):
    def __init__(self, count: int, seq_len: int, vocab: int, offset: int) -> None:
        self.count, self.seq_len, self.vocab, self.offset = count, seq_len, vocab, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index + self.offset
        stride = i % 7 + 1
        block = (torch.arange(self.seq_len + 1) * stride + i) % (self.vocab - 1) + 1
        doc_ids = (
            (torch.arange(self.seq_len) >= self.seq_len // 2).long()
            if i % 2
            else torch.zeros(self.seq_len, dtype=torch.long)
        )
        return {"input_ids": block[:-1], "labels": block[1:], "doc_ids": doc_ids}


class ToyDataModule(OuroDataModule):
    """Arithmetic-progression sequences (learnable quickly), some rows holding two documents."""

    def __init__(
        self,
        seq_len: int = 32,
        batch_size: int = 4,
        vocab_size: int = 512,
        train_size: int = 4096,
        val_size: int = 16,
    ) -> None:
        super().__init__()
        self.seq_len, self.batch_size, self.vocab_size = seq_len, batch_size, vocab_size
        self.train_size, self.val_size = train_size, val_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Patterns(self.train_size, self.seq_len, self.vocab_size, 0), batch_size=self.batch_size
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            _Patterns(self.val_size, self.seq_len, self.vocab_size, 10_000), batch_size=self.batch_size
        )
