"""`HubPushCallback`: export (and optionally push) the model when a stage finishes training."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from ouro.checkpoints import ModelSource
from ouro.distributed import full_network_state
from ouro.hub.export import export_source
from ouro.hub.push import PushError, push


class HubPushCallback(Callback):
    """At the end of training, write an official-format export of the model and push it to the Hub.

    Add it to a recipe under ``trainer.callbacks`` (``class_path: ouro.hub.callback.HubPushCallback``). A failed
    push does not fail the stage: it warns with the command that retries it; the export stays on disk. Under
    FSDP every rank gathers the shards and rank 0 writes the full model.
    """

    def __init__(
        self,
        repo_id: str | None = None,
        out_dir: str | None = None,
        push: bool = True,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "bfloat16",
    ) -> None:
        """
        Args:
            repo_id: Hub repository ORG/NAME to push to (required when push is true).
            out_dir: Export folder; default ``<default_root_dir>/export`` (replaced at every run).
            push: Upload the export after writing it; false only exports.
            private: Create the repository as private.
            revision: Branch to push to (default main).
            commit_message: Commit message (default: names the stage directory and tokens seen).
            tokenizer: tokenizer.json file, folder or Hub repo id when the module records none.
            dtype: dtype of the exported weights.
        """
        if push and not repo_id:
            raise ValueError(
                "HubPushCallback needs repo_id (ORG/NAME) when push is true; set push: false to only export"
            )
        self.repo_id, self.out_dir, self.push = repo_id, out_dir, push
        self.private, self.revision, self.commit_message = private, revision, commit_message
        self.tokenizer, self.dtype = tokenizer, dtype
        self.exported: Path | None = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted:
            return
        weights = full_network_state(trainer, pl_module)  # every rank: gathers the shards under FSDP
        if not trainer.is_global_zero:
            return
        meta: dict = {}
        try:
            pl_module.on_save_checkpoint(
                meta
            )  # the module records config, tokens, provenance, tokenizer here
        except (KeyError, AttributeError):
            meta = {}
        info = meta.get("ouro", {})
        source = ModelSource(
            config=pl_module.net.config,
            state_dict=weights,
            path=str(trainer.default_root_dir),
            kind="memory",
            tokens_seen=int(info.get("tokens_seen", getattr(pl_module, "tokens_seen", 0))),
            tokenizer_path=info.get("tokenizer_path"),
            provenance=list(info.get("provenance") or []),
        )
        out = Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "export"
        self.exported = export_source(
            source,
            out,
            tokenizer=self.tokenizer,
            dtype=self.dtype,
            overwrite=True,
            repo_name=self.repo_id,
            source_name=str(trainer.default_root_dir),
            tokenizer_option="HubPushCallback's tokenizer (init_args.tokenizer in the recipe)",
        )
        if not self.push:
            return
        message = self.commit_message or (
            f"ouro: end of stage {Path(trainer.default_root_dir).name} ({source.tokens_seen:,} tokens)"
        )
        try:
            push(
                str(self.exported),
                self.repo_id,
                private=self.private,
                revision=self.revision,
                commit_message=message,
            )
        except (PushError, FileNotFoundError) as error:
            rank_zero_warn(f"HubPushCallback: push failed: {error}")
