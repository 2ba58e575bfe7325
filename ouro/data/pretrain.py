"""`PretrainDataModule`: weighted mixtures of prepared token shards, streamed with litdata, cut into
``seq_len + 1`` blocks, with document boundaries, exact mid-epoch resume and tokens-per-source logging."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from litdata import StreamingDataLoader, TokensLoader
from litdata.streaming.resolver import Dir

from ouro.data import remote, worker_server
from ouro.data.base import OuroDataModule
from ouro.data.batching import BlockCollate
from ouro.data.builtin_sources import builtin_dirs, is_builtin
from ouro.data.cache import local_path
from ouro.data.manifest import Manifest, check_same_tokenizer
from ouro.data.streaming import ResumableLoader, SourceDataset, WeightedMixture
from ouro.data.tokenizer import load_tokenizer, tokenizer_hash
from ouro.data.workers import LeaveSignalsToMainProcess
from ouro.errors import DataError

BUILTIN = "builtin"
AUTO = "auto"


class PretrainDataModule(OuroDataModule):
    """Token streams from ``ouro prepare`` shards (or the built-in corpus), mixed by weight.

    Every sample is a block of ``seq_len + 1`` tokens cut from a shard chunk at read time, so the same shards
    serve every sequence length. Batches follow the batch contract: ``input_ids``, ``labels`` (next tokens) and
    ``doc_ids`` numbered from the EOS positions. The loader state (position in every source and the mixture's
    random state) lives in the Lightning checkpoint: ``fit(ckpt_path=...)`` continues with exactly the batches an
    uninterrupted run would have seen (same world size, workers and batch size). One source also resumes on
    another world size or ``num_workers`` (`elastic_resume`): litdata restripes the rest of the epoch over the
    new ranks and workers, so no row of the epoch is skipped or repeated.

    A mixture epoch ends as soon as **any** source runs out (litdata ``CombinedStreamingDataset``); the next epoch
    reshuffles and restarts every source. A small, up-weighted source can therefore keep a large one from ever
    reaching its tail: ``setup`` warns with the numbers when that happens.
    """

    def __init__(
        self,
        sources: list[str] | str = BUILTIN,
        weights: list[float] | None = None,
        val_source: str | None = AUTO,
        seq_len: int = 4096,
        batch_size: int = 1,
        num_workers: int = 1,
        seed: int = 42,
        shuffle: bool = True,
        doc_masking: bool = True,
        prepare_workers: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        """
        Args:
            sources: Shard folders written by ``ouro prepare`` (local paths or s3:// / gs:// / az:// URLs), or
                a built-in source prepared offline on first use (`ouro.data.builtin_sources`): ``builtin`` (the
                standard-library corpus), ``builtin-reasoning`` (multi-hop conversations as ChatML text).
            weights: Sampling weight of each source (normalised); default: proportional to their sizes.
            val_source: Shard folder (or URL) for validation, ``builtin`` (the built-in corpus's held-out split),
                null, or ``auto``: the built-in held-out split when the sources are the built-in corpus, else none
                (said at start: another corpus's tokenizer would not fit your model).
            seq_len: Tokens per training sequence (blocks of seq_len + 1). `set_seq_len` changes it; that takes
                effect when the train loader is rebuilt (a new stage, or ``reload_dataloaders_every_n_epochs``).
            batch_size: Micro-batch size per device.
            num_workers: Loader worker processes per device (a resume may change it when there is one source).
            seed: Shuffle and mixture seed.
            shuffle: Shuffle chunks and blocks (validation never shuffles).
            doc_masking: Emit ``doc_ids`` so attention never crosses documents and the prediction across a
                boundary does not count; false trains on the raw stream.
            prepare_workers: Processes that tokenize the built-in corpus on first use (default: one per CPU).
            cache_dir: Local folder for the chunks streamed from object storage (default
                ``$OURO_CACHE/chunks``, i.e. ``~/.cache/ouro/chunks``); one subfolder per URL.
        """
        super().__init__()
        self.sources = [sources] if isinstance(sources, str) else list(sources)
        self.weights = list(weights) if weights is not None else None
        self.val_source = self._default_val_source() if val_source == AUTO else val_source
        self.cache_dir = cache_dir
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.doc_masking = doc_masking
        self.prepare_workers = prepare_workers
        if not self.sources:
            raise DataError("sources is empty: give at least one shard folder or 'builtin'")
        if self.weights is not None and (len(self.weights) != len(self.sources) or min(self.weights) <= 0):
            raise DataError(f"weights {self.weights} must be positive, one per source ({len(self.sources)})")
        if seq_len < 1 or batch_size < 1 or num_workers < 0:
            raise DataError(
                f"seq_len and batch_size must be >= 1 and num_workers >= 0, got {seq_len}, "
                f"{batch_size}, {num_workers}"
            )
        self.tokens_per_source = [0] * len(self.sources)
        self.manifests: dict[str, Manifest] = {}
        self.eos_id: int | None = None
        self._train_dirs: list[Path | str] = []
        self._val_dir: Path | str | None = None
        self._builtin_dirs: dict[str, dict[str, Path]] = {}

    format = "pretrain"

    @property
    def elastic_resume(self) -> bool:
        """Whether a resume may change the world size or ``num_workers``: litdata restripes one source's
        remaining epoch; a weighted mixture resumes only on the same world size, workers and batch size."""
        return len(self.sources) == 1

    #: Packing length that SFT shards of a built-in source must have (None: any; pretraining shards serve every
    #: ``seq_len``). `SFTDataModule` sets it from its ``seq_len``.
    packed_seq_len: int | None = None

    def _default_val_source(self) -> str | None:
        """``auto``: the built-in held-out split for built-in sources; none for the user's own shards."""
        names = set(self.sources)
        if len(names) == 1 and is_builtin(next(iter(names))):
            return next(iter(names))
        rank_zero_info(
            "data.val_source: none (the sources are your own shards, and the built-in validation set was made "
            "with another tokenizer); set data.val_source to a folder prepared like the sources to validate"
        )
        return None

    # ------------------------------------------------------------------------------------------- preparation
    def _builtin(self, name: str) -> dict[str, Path]:
        """The train and val folders of a built-in source (`ouro.data.builtin_sources`), built on first use."""
        if name not in self._builtin_dirs:
            self._builtin_dirs[name] = builtin_dirs(
                name, self.format, self.packed_seq_len, self.prepare_workers
            )
        return self._builtin_dirs[name]

    def prepare_data(self) -> None:
        for name in dict.fromkeys([*self.sources, self.val_source]):
            if is_builtin(name):
                self._builtin(name)

    def _resolve(self, source: str, split: str) -> Path | str:
        if remote.is_remote(source):
            return remote.litdata_url(source)
        if is_builtin(source):
            return self._builtin(source)[split]
        path = Path(source).expanduser()
        if not path.is_dir():
            raise DataError(
                f"data source {source!r} does not exist; produce it with `ouro prepare <inputs> "
                f"{source} --format {self.format}`"
            )
        return path

    def setup(self, stage: str | None = None) -> None:
        self._train_dirs = [self._resolve(s, "train") for s in self.sources]
        self._val_dir = self._resolve(self.val_source, "val") if self.val_source else None
        dirs = self._train_dirs + ([self._val_dir] if self._val_dir else [])
        self.manifests = {str(d): Manifest.load(d, self._cache(d)) for d in dirs}
        first = check_same_tokenizer(self.manifests)
        for directory, manifest in self.manifests.items():
            if manifest.format != self.format:
                raise DataError(
                    f"{directory} holds {manifest.format!r} shards but {type(self).__name__} needs "
                    f"{self.format!r}; prepare it with `ouro prepare ... --format {self.format}`"
                )
        self.eos_id = first.eos_token_id
        shipped = self._shipped_tokenizer(self._train_dirs[0])
        self.tokenizer_path = str(shipped) if shipped is not None else local_path(first.tokenizer)
        self._check_block_size()
        self.check_connection()
        self._warn_exhaustion()

    def check_connection(self) -> None:
        """Refuse shards whose tokenizer does not fit the connected model (vocabulary and EOS), or differs from
        the one the stage's ``init_from`` was trained with."""
        if self.connection is None or not self.manifests:
            return  # runs again when the other half arrives (setup or connect)
        connection = self.connection
        for directory, manifest in self.manifests.items():
            manifest.check_model(connection.vocab_size, connection.eos_token_id, directory)
        source = connection.source_tokenizer
        if not source:
            return
        if source != "builtin" and not Path(source).exists():
            rank_zero_warn(
                f"init_from {connection.init_from} was trained with tokenizer {source}, which no longer exists: "
                "the data's tokenizer is checked against the model's vocabulary and EOS only"
            )
            return
        expected = tokenizer_hash(load_tokenizer(source))
        for directory, manifest in self.manifests.items():
            if manifest.tokenizer_hash != expected:
                raise DataError(
                    f"data {directory} was tokenized with {manifest.tokenizer!r} (hash "
                    f"{manifest.tokenizer_hash[:12]}) but init_from {connection.init_from} was trained with "
                    f"{source} (hash {expected[:12]}); prepare the data with that tokenizer "
                    f"(`ouro prepare ... --tokenizer {source}`)"
                )

    def _check_connected(self) -> None:
        """A Trainer's module must have connected the data (`OuroLM` does in ``setup``): unchecked data would
        reach the model otherwise."""
        if self.trainer is not None and self.connection is None:
            raise DataError(
                f"{type(self).__name__} was not connected to a model: its LightningModule must call "
                "datamodule.connect(DataConnection(...)) in setup (ouro.module.OuroLM does)"
            )

    def _check_block_size(self) -> None:
        """Pretraining shards serve any ``seq_len``; SFT overrides this."""

    def set_seq_len(self, seq_len: int) -> None:
        """Cut blocks of ``seq_len + 1`` tokens from the next train loader on (`ouro.callbacks.LongContextSchedule`)."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise DataError(f"seq_len must be an integer >= 1, got {seq_len!r}")
        self.seq_len = seq_len

    def _cache(self, directory: Path | str) -> Path | None:
        return remote.cache_dir(str(directory), self.cache_dir) if remote.is_remote(directory) else None

    def _shipped_tokenizer(self, directory: Path | str) -> Path | None:
        """The ``tokenizer.json`` a prepared folder ships (fetched into the cache for a URL)."""
        if not remote.is_remote(directory):
            path = Path(directory) / "tokenizer.json"
            return path if path.is_file() else None
        return remote.download(str(directory), "tokenizer.json", self._cache(directory) / "tokenizer.json")

    def _blocks(self, directory: Path | str) -> int:
        return self.manifests[str(directory)].tokens // (self.seq_len + 1)

    def _normalised_weights(self) -> list[float]:
        raw = self.weights or [float(self._blocks(d)) or 1.0 for d in self._train_dirs]
        return [w / sum(raw) for w in raw]

    def _warn_exhaustion(self) -> None:
        if len(self._train_dirs) < 2:
            return
        weights = self._normalised_weights()
        blocks = [self._blocks(d) for d in self._train_dirs]
        samples = [b / w for b, w in zip(blocks, weights)]  # mixture samples until each source runs out
        first = min(range(len(samples)), key=samples.__getitem__)
        seen = [samples[first] * w / max(b, 1) for b, w in zip(blocks, weights)]
        if min(seen) < 0.9:
            short = min(range(len(seen)), key=seen.__getitem__)
            warnings.warn(
                f"source {self.sources[first]} (weight {weights[first]:.3f}, {blocks[first]} blocks) runs out after "
                f"about {int(samples[first])} samples, when {self.sources[short]} has seen only "
                f"{seen[short]:.0%} of its blocks; each new epoch reshuffles and restarts every source, so that "
                "tail may never be reached. Lower the weight of the small source or give it more data.",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------------------ loaders
    def _dataset(self, directory: Path | str, index: int, shuffle: bool, drop_last: bool):
        cache = self._cache(directory)
        if cache:
            remote.allow_plain_http_endpoint()
        return SourceDataset(
            Dir(path=str(cache / "chunks"), url=str(directory)) if cache else str(directory),
            item_loader=TokensLoader(block_size=self.seq_len + 1),
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
            source_index=index,
        )

    def _collate(self) -> BlockCollate:
        return BlockCollate(self.eos_id, sft=self.format == "sft", doc_masking=self.doc_masking)

    def train_dataloader(self):
        self._check_connected()
        datasets = [self._dataset(d, i, self.shuffle, True) for i, d in enumerate(self._train_dirs)]
        if len(datasets) == 1:
            dataset = datasets[0]
        else:
            dataset = WeightedMixture(
                datasets, seed=self.seed, weights=self._normalised_weights(), iterate_over_all=False
            )
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            drop_last=True,
            **self._worker_init(),
        )

    def val_dataloader(self):
        self._check_connected()
        if self._val_dir is None:
            return []
        dataset = self._dataset(self._val_dir, 0, False, False)
        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=min(self.num_workers, 1),
            collate_fn=self._collate(),
            **self._worker_init(),
        )

    def _worker_init(self) -> dict:
        """Loader workers leave SIGTERM / SIGUSR1 to the training process (`ouro.data.workers`), and workers of
        remote sources redo this process's litdata settings: a spawned worker (the start method litdata's
        ``optimize`` sets for the whole process) starts without them. Under ``ouro fit`` they are forked by the
        worker server (`ouro.data.worker_server`), never by the training process itself."""
        dirs = [*self._train_dirs, *([self._val_dir] if self._val_dir else [])]
        then = remote.worker_init if any(map(remote.is_remote, dirs)) else None
        options: dict = {"worker_init_fn": LeaveSignalsToMainProcess(then)}
        context = worker_server.worker_context()
        if self.num_workers > 0 and context is not None:
            options["multiprocessing_context"] = context
        return options

    # ------------------------------------------------------------------------------------- per-source tokens
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        source = batch.pop("source", None)
        trainer = self.trainer
        if source is None or trainer is None or not trainer.training:
            return batch
        per_sample = batch["input_ids"].shape[1] * trainer.world_size
        for index in source.tolist():
            self.tokens_per_source[index] += per_sample
        if (
            trainer.loggers
            and trainer.log_every_n_steps
            and trainer.global_step % trainer.log_every_n_steps == 0
        ):
            metrics = {
                f"data/tokens/{self._source_name(i)}": float(n) for i, n in enumerate(self.tokens_per_source)
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        return batch

    def _source_name(self, index: int) -> str:
        name = self.sources[index]
        return name if is_builtin(name) else Path(name).name

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_per_source": list(self.tokens_per_source), "sources": list(self.sources)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("sources") == self.sources:
            self.tokens_per_source = list(state_dict["tokens_per_source"])
