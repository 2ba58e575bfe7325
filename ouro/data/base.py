"""The contract between the DataModules, the LightningModule, the stage and the callbacks.

Like litgpt's ``DataModule.connect``, everything a DataModule needs that is not known when the recipe is parsed
arrives in one declared call: `OuroDataModule.connect` with a `DataConnection` (the model's vocabulary and EOS
id, and the tokenizer the stage's ``init_from`` was trained with). `ouro.module.OuroLM` makes that call when a
stage is set up. What the module and the callbacks read back (``seq_len``, ``tokenizer_path``, `set_seq_len`,
`resume_settings`) is declared here too, so nothing is looked up by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L


@dataclass(frozen=True)
class DataConnection:
    """What the data needs from the model and the stage, handed over by `OuroDataModule.connect`."""

    vocab_size: int
    """Rows of the model's embedding: every token id of the data must be smaller."""
    eos_token_id: int | None
    """The model's end-of-document id; the data's EOS must be the same token."""
    source_tokenizer: str | None = None
    """``tokenizer.json`` the stage's ``init_from`` was trained with (None: a fresh stage, or not recorded)."""
    init_from: str | None = None
    """The stage's ``init_from`` as the recipe wrote it (named in errors)."""
    stage: str | None = None
    """The stage's name (its run directory's name)."""


class OuroDataModule(L.LightningDataModule):
    """Base of every ouro DataModule: the settings the module and the callbacks read, and `connect`.

    Subclasses set ``seq_len`` and, once set up, ``tokenizer_path``, and check the data against the model in
    `check_connection` (which runs as soon as both the data is set up and `connect` was called).
    """

    #: Tokens per training sequence (the blocks are ``seq_len + 1`` long).
    seq_len: int
    #: Settings a resume must keep: the loader state only fits the same values (`ouro.resume`).
    RESUME_FIELDS = ("seq_len", "batch_size", "num_workers")

    def __init__(self) -> None:
        super().__init__()
        self.connection: DataConnection | None = None
        """What `connect` handed over (None until then)."""
        self.tokenizer_path: str | None = None
        """The ``tokenizer.json`` the data was prepared with, once set up (None: token ids from no tokenizer)."""

    def connect(self, connection: DataConnection) -> None:
        """Take what the data needs from the model and the stage; checks the data against it once set up."""
        self.connection = connection
        self.check_connection()

    def check_connection(self) -> None:
        """Refuse data that does not fit the connected model (runs after `connect` and after ``setup``).

        The base holds no prepared data, so there is nothing to check; `PretrainDataModule` checks its shards.
        """

    @property
    def elastic_resume(self) -> bool | None:
        """Whether a resume may change the world size or ``num_workers`` (the loader restripes its position);
        None: the DataModule does not say, and a resume keeps them."""
        return None

    def set_seq_len(self, seq_len: int) -> None:
        """Use ``seq_len`` from the next train loader on (`ouro.callbacks.LongContextSchedule`)."""
        self.seq_len = seq_len

    def resume_settings(self) -> dict[str, int]:
        """The values of `RESUME_FIELDS` this DataModule has (integers; others are left out)."""
        values = {}
        for name in self.RESUME_FIELDS:
            value = vars(self).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                values[name] = value
        return values
