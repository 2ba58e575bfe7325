"""OuroLM under a real Lightning Trainer on CPU: bf16-mixed training, Stage II, validation metrics, checkpoints."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ouro.config import OuroConfig
from ouro.cross_entropy import IGNORE_INDEX
from ouro.module import OptimizerConfig, OuroLM

SEQ = 32
ALPHABET = 48  # tokens in use (of the tiny preset's 512)


class SuccessorDataset(Dataset):
    """Rows that follow a fixed random permutation (next = perm[current]): repeating cycles, learnable as bigrams.

    Each row packs two documents (``doc_ids`` 0 and 1); with ``mask_prefix`` the first tokens of every row do not
    count (labels -100), as in SFT data.
    """

    def __init__(self, rows: int, seed: int = 0, mask_prefix: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(ALPHABET, generator=torch.Generator().manual_seed(1234))
        tokens = torch.empty(rows, SEQ + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, ALPHABET, (rows,), generator=gen)
        for i in range(1, SEQ + 1):
            tokens[:, i] = perm[tokens[:, i - 1]]
        self.input_ids, self.labels = tokens[:, :-1], tokens[:, 1:].clone()
        self.labels[:, :mask_prefix] = IGNORE_INDEX
        self.doc_ids = (torch.arange(SEQ) >= SEQ // 2).long().expand(rows, SEQ)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "doc_ids": self.doc_ids[i]}


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def loader(rows: int, seed: int = 0, mask_prefix: int = 0) -> DataLoader:
    return DataLoader(SuccessorDataset(rows, seed, mask_prefix), batch_size=8, shuffle=False)


def tiny_module(**kwargs) -> OuroLM:
    return OuroLM(
        model=OuroConfig.preset("tiny", total_ut_steps=3),
        optimizer=OptimizerConfig(lr=3e-3),
        loss_chunk_size=100,
        **kwargs,
    )


def test_bf16_mixed_fit_lowers_loss_and_writes_a_safe_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = tiny_module()
    recorder = LossRecorder()
    fit = trainer(tmp_path, max_steps=30, precision="bf16-mixed", callbacks=[recorder])
    fit.fit(module, loader(240))
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert len(recorder.losses) == 30
    assert first > 0.9 * math.log(512)  # starts near uniform over the vocabulary
    assert last < first - 1.5, (first, last)
    assert module.tokens_seen == 30 * 8 * SEQ
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed precision keeps fp32 weights

    paths = list(tmp_path.rglob("*.ckpt"))
    assert len(paths) == 1
    checkpoint = torch.load(paths[0], weights_only=True)
    assert checkpoint["ouro"]["tokens_seen"] == 30 * 8 * SEQ
    assert checkpoint["global_step"] == 30
    state = checkpoint["state_dict"]
    assert "net.model.layers.0.self_attn.q_proj.weight" in state and "net.lm_head.weight" in state
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    for name, value in module.net.state_dict().items():
        assert torch.equal(net_state[name], value), name


def test_load_from_checkpoint_with_weights_only(tmp_path):
    """`OuroLM.load_from_checkpoint(path, weights_only=True)`: the hyperparameters are plain dicts there."""
    module = tiny_module(entropy_coef=0.07)
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, loader(16))
    (path,) = tmp_path.rglob("*.ckpt")
    loaded = OuroLM.load_from_checkpoint(path, weights_only=True)
    assert loaded.config == module.config and loaded.optim == module.optim and loaded.entropy_coef == 0.07
    assert loaded.tokens_seen == module.tokens_seen
    for name, value in module.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], value), name


def test_stage2_changes_only_the_gate(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(objective="stage2")
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer(tmp_path, max_steps=5, enable_checkpointing=False).fit(module, loader(40))
    after = module.net.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["model.early_exit_gate.bias", "model.early_exit_gate.weight"]
    optimised = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {
        id(module.net.model.early_exit_gate.weight),
        id(module.net.model.early_exit_gate.bias),
    }


def test_validation_metrics_equal_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(q_exit_thresholds=[0.5, 1.0])
    val = loader(16, seed=1, mask_prefix=5)
    metrics = trainer(tmp_path, max_steps=1).validate(module, val, verbose=False)[0]
    for t in (1, 2, 3):
        assert {f"val/ce_step{t}", f"val/ppl_step{t}"} <= set(metrics)
        assert metrics[f"val/ppl_step{t}"] == pytest.approx(math.exp(metrics[f"val/ce_step{t}"]), rel=1e-5)
    assert {"val/loss", "val/loss_q0.5", "val/depth_q0.5", "val/loss_q1", "val/depth_q1"} <= set(metrics)

    # The same numbers from full logits and F.cross_entropy over every counted token.
    data = val.dataset
    module.net.eval()
    with torch.no_grad():
        out = module.net(data.input_ids, doc_ids=data.doc_ids)
        for t in range(3):
            logits = module.net.logits(out, t)
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), data.labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
            assert metrics[f"val/ce_step{t + 1}"] == pytest.approx(float(ce), rel=1e-4)
    assert metrics["val/loss_q1"] == pytest.approx(metrics["val/ce_step3"], rel=1e-6)
    assert metrics["val/depth_q1"] == pytest.approx(3.0)
    assert 1.0 <= metrics["val/depth_q0.5"] <= 3.0


def test_stage1_loss_of_a_batch_equals_a_naive_computation():
    torch.manual_seed(0)
    module = tiny_module(entropy_coef=0.1)
    with torch.no_grad():
        module.net.model.early_exit_gate.weight.normal_(0, 0.5)  # a non-trivial exit distribution
    data = SuccessorDataset(4, mask_prefix=3)
    batch = {"input_ids": data.input_ids, "labels": data.labels, "doc_ids": data.doc_ids}
    result, _, _ = module.compute_loss(batch)

    out = module.net(data.input_ids, doc_ids=data.doc_ids)
    labels = data.labels.reshape(-1)
    counted = labels != IGNORE_INDEX
    ce = torch.stack(
        [
            F.cross_entropy(
                module.net.logits(out, t).reshape(-1, 512),
                labels,
                ignore_index=IGNORE_INDEX,
                reduction="none",
            )
            for t in range(3)
        ],
        -1,
    )[counted]
    lam = torch.sigmoid(out.gate_logits.reshape(-1, 3))[counted]
    p = torch.stack([lam[:, 0], (1 - lam[:, 0]) * lam[:, 1], (1 - lam[:, 0]) * (1 - lam[:, 1])], -1)
    expected = ((p * ce).sum(-1) + 0.1 * (p * p.log()).sum(-1)).mean()
    torch.testing.assert_close(result.loss, expected, rtol=1e-5, atol=1e-6)


def test_attention_backend_reaches_the_model():
    module = tiny_module(attention_backend="flash")
    batch = SuccessorDataset(2)[0]
    batch = {k: v[None] for k, v in batch.items()}
    with pytest.raises(RuntimeError, match="flash"):  # no flash-attn kernel on CPU: a clear error, not SDPA
        module.compute_loss(batch)
