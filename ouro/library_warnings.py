"""Silence the library messages that every ``ouro`` run printed and that never call for action.

Each entry says why it is harmless with the versions ``ouro`` supports. Anything else still prints.
"""

from __future__ import annotations

import logging
import warnings

#: (message regex, category, why it is harmless)
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "Lightning's own pytree helper still builds torch's LeafSpec, which torch >= 2.10 deprecates but keeps "
        "working; nothing in ouro or in a recipe can change it.",
    ),
    (
        r"Your `IterableDataset` has `__len__` defined",
        UserWarning,
        "ouro's data modules read litdata StreamingDatasets, which split their chunks between loader workers "
        "themselves, so the length Lightning warns about is exact.",
    ),
)

#: Start of an INFO line Lightning logs on every fit without a LitLogger: an advertisement, not a finding.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LITLOGGER_TIP)


def filter_harmless_warnings() -> None:
    """Install the filters (idempotent: calling it again adds nothing)."""
    for message, category, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # lightning.pytorch and lightning.fabric each point lightning_utilities' rank_zero_info at their own logger.
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning_utilities.core.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())
