"""Test-wide settings (few CPU threads, a fixed seed before every test) and the setup the tests share.

Helpers (import them: ``from conftest import build_tiny_model``):

- `build_tiny_model`: the seeded ``tiny`` model, with config overrides and a spread exit gate;
- `ToyDataModule` (from ``toy_data``, which recipes name as ``toy_data.ToyDataModule``): the toy dataset;
- `TrainingRecorder`: a callback keeping every training batch, loss and optimizer step;
- `write_word_tokenizer`: a word-level tokenizer with the ChatML special tokens at ids 0, 1, 2;
- `write_fit_checkpoint`: a checkpoint as ``ouro fit`` writes it.

Fixtures: `short_tmp_path` (a folder whose path is short enough for a run's temp dir), `hf_offline` (the Hub and ``datasets`` offline), `local_hub` (a local Hub that ``huggingface_hub``
talks to), `builtin_tokenizer` (the built-in tokenizer, loaded once).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch
from local_hub import TOKEN, LocalHub
from toy_data import ToyDataModule

from ouro import OuroConfig, OuroForCausalLM
from ouro.data.tokenizer import load_tokenizer

torch.set_num_threads(1)

pytest_plugins = ["worker_scheduling"]

__all__ = [
    "CHATML_SPECIALS",
    "TOKEN",
    "TrainingRecorder",
    "LocalHub",
    "ToyDataModule",
    "build_tiny_model",
    "write_fit_checkpoint",
    "write_word_tokenizer",
]

#: The ChatML special tokens, at ids 0, 1, 2 of `write_word_tokenizer`'s vocabulary.
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """An empty folder with a short path, removed after the test: a run directory in it keeps its temp dir
    inside (`ouro.run_dir.MAX_SCRATCH_PATH`), however long pytest's own ``tmp_path`` is (under xdist it grows)."""
    folder = Path(tempfile.mkdtemp(prefix="ouro-t"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """A `LocalHub` for one test: HF_ENDPOINT points at it, HF_TOKEN is its `TOKEN`, HF_HOME is empty (no login
    cached on the machine is read). Processes started by the test inherit these settings."""
    server = LocalHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.close()


@pytest.fixture(scope="session")
def builtin_tokenizer():
    """The built-in tokenizer (``load_tokenizer("builtin")``), loaded once for the session; nothing changes it."""
    return load_tokenizer("builtin")


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


def write_word_tokenizer(path: Path, vocab_size: int = 512) -> Path:
    """A word-level ``tokenizer.json`` at ``path`` of ``vocab_size`` words: the ChatML special tokens at ids 0, 1,
    2, then ``[UNK]``, ``user``, ``assistant``, ``system`` and ``w0``, ``w1``, ... (split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    fixed = [*CHATML_SPECIALS, "[UNK]", "user", "assistant", "system"]
    words = fixed + [f"w{i}" for i in range(vocab_size - len(fixed))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(CHATML_SPECIALS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def write_fit_checkpoint(
    path: Path,
    model: OuroForCausalLM,
    *,
    tokenizer: str | Path | None = None,
    tokens_seen: int | None = None,
    provenance: list[dict] | None = None,
    **top,
) -> Path:
    """A checkpoint at ``path`` as ``ouro fit`` writes it: the weights under ``net.`` and the ``ouro`` section (the
    config, and the tokens seen, provenance and tokenizer path where given); ``top`` adds top-level entries such
    as ``global_step`` or ``optimizer_states``."""
    meta: dict = {"config": asdict(model.config)}
    if tokens_seen is not None:
        meta["tokens_seen"] = tokens_seen
    if provenance is not None:
        meta["provenance"] = provenance
    if tokenizer is not None:
        meta["tokenizer_path"] = str(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "ouro": meta, **top}, path)
    return path


class TrainingRecorder(L.Callback):
    """What an `OuroLM` fit went through. Per micro-batch: a copy of its ``input_ids`` (`batches`; resume tests
    compare them) and its loss (`losses`). Per optimizer step (`steps`): tokens seen, LR, entropy coefficient β,
    loop count T, RoPE base, the micro-batches in the step and the accumulation factor in force."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.steps: list[dict[str, float]] = []
        self._micro = 0

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of every micro-batch's ``input_ids``."""
        return [tuple(batch.shape) for batch in self.batches]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["input_ids"].clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._micro += 1
        self.losses.append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append(
            dict(
                tokens=pl_module.tokens_seen,
                lr=optimizer.param_groups[0]["lr"],
                beta=pl_module.entropy_coef,
                T=pl_module.config.total_ut_steps,
                theta=pl_module.config.rope_theta,
                micro=self._micro + 1,
                accumulate=trainer.accumulate_grad_batches,
            )
        )
        self._micro = -1  # the step's last micro-batch ends after this hook


LOCAL_CHOICE_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
LOCAL_ANSWER_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: exact_match
"""


def write_local_tasks(
    folder: Path, docs: list[dict], choice_task: str, answer_task: str, max_gen_toks: int = 4
) -> Path:
    """An lm-eval ``include_path`` folder (no download): ``docs`` (``question``, ``choices``, ``answer``) as
    ``docs.jsonl``, scored as the multiple-choice task ``choice_task`` and the generation task ``answer_task``
    (the right choice, greedy, up to ``max_gen_toks`` tokens)."""
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{choice_task}.yaml").write_text(LOCAL_CHOICE_TASK.format(name=choice_task, data=data))
    answer = LOCAL_ANSWER_TASK.format(name=answer_task, data=data, max_gen_toks=max_gen_toks)
    (folder / f"{answer_task}.yaml").write_text(answer)
    return folder
