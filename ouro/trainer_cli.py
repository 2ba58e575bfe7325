"""LightningCLI for ``ouro fit / validate / test / predict``: recipes, run directories and resume."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ouro.checkpoints import find_run_checkpoint
from ouro.cli import configure_parsing
from ouro.module import OuroLM
from ouro.run_dir import FinalCheckpoint, RunConfigCallback, default_checkpoint, default_loggers


class OuroCLI(LightningCLI):
    """LightningCLI with Ouro's run-directory conventions.

    * ``trainer.default_root_dir`` is the stage's run directory; unless the recipe says otherwise it gets CSV and
      TensorBoard loggers and ``checkpoints/last.ckpt`` (also saved when training ends).
    * ``ouro fit`` on a run directory that holds a checkpoint resumes it (weights, optimiser, schedules, data
      position) instead of failing; otherwise the model starts from ``model.init_from`` (or from scratch).
    * Checkpoints are loaded with ``weights_only=True``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="Also keep a numbered checkpoint every N optimizer steps (last.ckpt is always kept).",
        )
        parser.add_argument(
            "--cpu_threads",
            type=int | None,
            default=None,
            help="Threads torch uses for CPU ops (default: torch's choice). Tiny CPU models run "
            "much faster with 1, and far faster than with more when other processes share "
            "the cores.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        threads = self._get(self.config_init, "cpu_threads", default=None)
        if threads:
            import torch

            torch.set_num_threads(threads)
        config = self._get(self.config_init, "trainer", default={})
        root = Path(config.get("default_root_dir") or "runs/default")
        config["default_root_dir"] = str(root)
        if config.get("logger") in (None, True):
            config["logger"] = default_loggers(root)
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if (
            not any(isinstance(c, ModelCheckpoint) for c in callbacks)
            and config.get("enable_checkpointing") is not False
        ):
            every = self._get(self.config_init, "checkpoint_every_n_steps", default=None)
            callbacks.append(default_checkpoint(root, every))
        if config.get("enable_checkpointing") is not False:
            callbacks.append(FinalCheckpoint())
        config["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        fit_config = self.config_init["fit"]
        root = Path(self.trainer.default_root_dir)
        ckpt_path = fit_config.get("ckpt_path")
        if ckpt_path is None:
            found = find_run_checkpoint(root)
            if found is not None:
                ckpt_path = str(found)
                fit_config["ckpt_path"] = ckpt_path
                print(f"ouro: resuming {root} from {found}", file=sys.stderr)
        if fit_config.get("weights_only") is None:
            fit_config["weights_only"] = True
        self.model.resuming = ckpt_path is not None
        self.model.stage_name = root.name
        configs = self.config["fit"].get("config") or []
        self.model.recipe = ", ".join(str(c) for c in configs) or None


def run_trainer_cli(args: list[str]) -> OuroCLI:
    configure_parsing()
    try:
        return _build_cli(args)
    finally:
        # Tear the process group down so multi-process runs exit cleanly (gloo may abort at interpreter exit).
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _build_cli(args: list[str]) -> OuroCLI:
    return OuroCLI(
        OuroLM,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=None if args == sys.argv[1:] else args,
    )
