"""LightningCLI for ``ouro fit / validate / test / predict``."""

from __future__ import annotations

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from ouro.module import OuroLM


class OuroCLI(LightningCLI):
    """LightningCLI with Ouro's defaults: the run directory's config.yaml is overwritten on reruns."""


def run_trainer_cli(args: list[str]) -> OuroCLI:
    return OuroCLI(
        OuroLM,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )
