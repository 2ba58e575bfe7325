"""Test-wide settings (few CPU threads, a fixed seed before every test) and the shared fixtures: the tiny model,
the toy data and a recorder of training batches."""

import lightning as L
import pytest
import torch
from toy_data import ToyDataModule

from ouro import OuroConfig, OuroForCausalLM

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub and `datasets` offline for one test (set per test: a module-level setting leaks into others)."""
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def build_tiny_model(
    seed: int = 0, gate_std: float | None = None, gate_bias: float | None = None, **changes
) -> OuroForCausalLM:
    """A seeded ``tiny`` `OuroForCausalLM` in eval mode; ``changes`` override config fields. ``gate_std`` /
    ``gate_bias`` spread the exit gate so Q-exit thresholds give different depths per token."""
    torch.manual_seed(seed)
    model = OuroForCausalLM(OuroConfig.preset("tiny", **changes)).eval()
    if gate_std is not None:
        torch.nn.init.normal_(model.model.early_exit_gate.weight, std=gate_std)
    if gate_bias is not None:
        torch.nn.init.constant_(model.model.early_exit_gate.bias, gate_bias)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """`build_tiny_model`: ``tiny_model(seed=0, gate_std=None, gate_bias=None, **config changes)``."""
    return build_tiny_model


@pytest.fixture(scope="session")
def toy_data():
    """`ToyDataModule` (arithmetic progressions, some rows holding two documents): ``toy_data(seq_len=...)``."""
    return ToyDataModule


class BatchRecorder(L.Callback):
    """Keeps a copy of the ``input_ids`` of every training batch (resume tests compare them)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["input_ids"].clone())


@pytest.fixture
def batch_recorder() -> BatchRecorder:
    """A fresh `BatchRecorder`."""
    return BatchRecorder()
