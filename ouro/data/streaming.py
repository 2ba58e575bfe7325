"""The litdata classes `PretrainDataModule` streams with, at module level so that the datasets pickle into
spawned loader workers (litdata is imported here)."""

from __future__ import annotations

from typing import Any

from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset


class SourceDataset(StreamingDataset):
    """A StreamingDataset whose samples say which mixture source they came from."""

    def __init__(self, *args: Any, source_index: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_index = source_index

    def __getitem__(self, index: Any) -> dict:
        return {"tokens": super().__getitem__(index), "source": self.source_index}


class WeightedMixture(CombinedStreamingDataset):
    """litdata's weighted ``CombinedStreamingDataset`` with a length: the expected number of samples until the
    first source runs out. Lightning prefetches one batch from a loader without length and then saves a loader
    state one batch ahead (resume would skip a batch); with a length it does not prefetch. The epoch ends at
    that length or when a source runs out, whichever comes first."""

    def get_len(self, num_workers: int, batch_size: int) -> int:
        self.num_workers, self.batch_size = num_workers, batch_size
        sizes = [d.get_len(num_workers, batch_size) for d in self._datasets]
        return int(min(size / weight for size, weight in zip(sizes, self._weights)))

    def __len__(self) -> int:
        return self.get_len(1, 1)


class ResumableLoader(StreamingDataLoader):
    """litdata's loader, fixed for resume across epochs: after ``load_state_dict`` it replays the restored epoch
    once, but it clears that flag only when an epoch runs to exhaustion. Lightning ends an epoch after
    ``len(loader)`` batches without exhausting it, so the next epoch would replay the restored one again."""

    _replayed = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._replayed = False

    def __iter__(self) -> Any:
        if self.restore and self._replayed:
            self.restore = False
        self._replayed = self.restore
        return super().__iter__()
