"""LightningCLI for ``ouro fit / validate / test / predict``: recipes, run directories, resume, and the checks of
a recipe that need its objects (`check_sequence_fits`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from jsonargparse import ArgumentError
from lightning import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ouro.callbacks.final_checkpoint import FinalCheckpoint
from ouro.callbacks.long_context import LongContextSchedule
from ouro.callbacks.progress import StageProgress
from ouro.checkpoint_io import with_atomic_checkpoint_io
from ouro.data.base import OuroDataModule
from ouro.data.pretrain import PretrainDataModule
from ouro.data.worker_server import start_worker_server
from ouro.distributed import resolve_strategy
from ouro.errors import RecipeError, usage_error
from ouro.library_warnings import filter_harmless_warnings
from ouro.module import OuroLM
from ouro.plan.preflight import plan_before_fit
from ouro.preemption import PreemptionCheckpoint, PreemptionSignals, exit_status, stop_line
from ouro.preflight import check_recipe_syntax
from ouro.recipe_yaml import configure_parsing
from ouro.resume import ResumeSettings, resume_checkpoint, run_settings
from ouro.run_dir import (
    CheckpointedStepRow,
    RunConfigCallback,
    default_checkpoint,
    default_loggers,
    release_run_scratch,
    use_run_scratch,
)
from ouro.run_lock import RunLock, is_first_process, release_run_locks


class OuroCLI(LightningCLI):
    """LightningCLI with Ouro's run-directory conventions.

    * ``trainer.default_root_dir`` is the stage's run directory; unless the recipe says otherwise it gets CSV and
      TensorBoard loggers and ``checkpoints/last.ckpt`` (also saved when training ends).
    * ``ouro fit`` on a run directory that holds a checkpoint resumes it (weights, optimiser, schedules, data
      position) instead of failing; otherwise the model starts from ``model.init_from`` (or from scratch), except
      in a run directory that has held a checkpoint, where that takes ``--restart true``.
    * Checkpoints are loaded with ``weights_only=True``.
    * ``ouro fit`` holds the run directory's lock (`ouro.run_lock`) and turns a pre-emption warning (SIGUSR1)
      into a checkpoint at a step boundary all ranks agree on, then requeues the SLURM job (`ouro.preemption`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The default OuroConfig() lists 24 layer types; left null, they follow the recipe's layer count.
        parser.set_defaults({"model.model.layer_types": None})
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="Also keep a numbered checkpoint every N optimizer steps (last.ckpt is always kept).",
        )
        parser.add_argument(
            "--restart",
            type=bool,
            default=False,
            help="Start the stage again from step 0 in a run directory that has held a checkpoint but has no "
            "readable one left (unreadable ones stay moved aside). Never discards a readable checkpoint: with "
            "one, the run resumes as usual.",
        )
        parser.add_argument(
            "--skip_plan",
            type=bool,
            default=False,
            help="Do not plan the step's GPU memory before a GPU run (the plan takes seconds on the CPU and "
            "prints one warning line when the step will not fit; `ouro plan` shows it in full).",
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
            torch.set_num_threads(threads)
        config = self._get(self.config_init, "trainer", default={})
        root = Path(config.get("default_root_dir") or "runs/default")
        config["default_root_dir"] = str(root)
        if self.subcommand == "fit" and is_first_process():
            RunLock(root).acquire()  # before anything is written into the run directory
        use_run_scratch(root, rank_zero_only.rank)
        config["strategy"] = resolve_strategy(config.get("strategy", "auto"))
        config["plugins"] = with_atomic_checkpoint_io(config.get("plugins"), config.get("strategy"))
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
        preemption = None
        if config.get("enable_checkpointing") is not False:
            callbacks.append(FinalCheckpoint())
            preemption = PreemptionCheckpoint()
            callbacks.append(preemption)
            callbacks.append(CheckpointedStepRow())
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(StageProgress())
        config["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        if preemption is not None:
            trainer._signal_connector = PreemptionSignals(trainer, preemption.request)
        return trainer

    def before_fit(self) -> None:
        fit_config = self.config_init["fit"]
        root = Path(self.trainer.default_root_dir)
        check_sequence_fits(
            self.model.config.max_position_embeddings, self.datamodule, self.trainer.callbacks
        )
        skip_plan = bool(self._get(self.config_init, "skip_plan", default=False))
        plan_before_fit(self.trainer, self.model, self.datamodule, skip=skip_plan)
        if fit_config.get("weights_only") is None:
            fit_config["weights_only"] = True
        trusted = fit_config["weights_only"] is False
        restart = bool(self._get(self.config_init, "restart", default=False))
        world_size = self.trainer.world_size
        ckpt_path = resume_checkpoint(
            root, fit_config.get("ckpt_path"), self.datamodule, trusted, restart, world_size
        )
        fit_config["ckpt_path"] = ckpt_path
        self.trainer.callbacks.append(ResumeSettings(run_settings(self.datamodule, world_size)))
        configs = self.config["fit"].get("config") or []
        self.model.stage.resuming = ckpt_path is not None
        self.model.stage.name = root.name
        self.model.stage.recipe = ", ".join(str(c) for c in configs) or None
        if isinstance(self.datamodule, PretrainDataModule) and self.datamodule.num_workers > 0:
            start_worker_server()  # before fit starts any thread (the process group's, the loaders')


def check_sequence_fits(max_positions: int, datamodule: Any, callbacks: list[Any]) -> None:
    """Refuse a stage whose sequences are longer than the model's ``max_position_embeddings``.

    The length is the DataModule's ``seq_len`` or, when a callback sets it (``LongContextSchedule(seq_len=)``),
    the callback's.
    """
    lengths = {"data.seq_len": datamodule.seq_len if isinstance(datamodule, OuroDataModule) else None}
    for callback in callbacks:
        length = callback.seq_len if isinstance(callback, LongContextSchedule) else None
        if isinstance(length, int):
            lengths[f"{type(callback).__name__}.seq_len"] = length
    for name, length in lengths.items():
        if isinstance(length, int) and length > max_positions:
            raise RecipeError(
                f"{name} is {length} but model.model.max_position_embeddings is {max_positions}: the model "
                f"has no positions past {max_positions}; raise max_position_embeddings to at least {length} "
                f"or lower {name}"
            )


def run_trainer_cli(args: list[str]) -> OuroCLI:
    configure_parsing(args)
    filter_harmless_warnings()
    check_recipe_syntax(args)
    try:
        return _build_cli(args)
    except ArgumentError as error:
        usage_error(args[0] if args else "fit", error)
    except BaseException as error:  # pre-empted, cancelled, or another rank died: one line, no traceback
        status = exit_status(error)
        if status is None or os.environ.get("OURO_DEBUG"):
            raise
        if is_first_process():
            notes = getattr(error, "__notes__", None)  # set only once a note was added (PEP 678)
            print(notes[-1] if notes else stop_line(error), file=sys.stderr, flush=True)
        raise SystemExit(status) from None
    finally:
        # Tear the process group down so multi-process runs exit cleanly (gloo may abort at interpreter exit).
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        release_run_scratch()
        release_run_locks()


def _build_cli(args: list[str]) -> OuroCLI:
    return OuroCLI(
        OuroLM,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},  # `usage_error` prints the error line first
        args=None if args == sys.argv[1:] else args,
    )
