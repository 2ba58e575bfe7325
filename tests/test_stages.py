"""Stage initialisation: init_from sources, upcycling, transitions, missing sources."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ouro import OuroConfig, OuroForCausalLM  # noqa: E402
from ouro.checkpoints import ModelSource  # noqa: E402
from ouro.data.manifest import Manifest  # noqa: E402
from ouro.data.pretrain import PretrainDataModule  # noqa: E402
from ouro.data.tokenizer import tokenizer_hash  # noqa: E402
from ouro.errors import DataError  # noqa: E402
from ouro.module import OuroLM  # noqa: E402
from ouro.stages import (  # noqa: E402
    StageInfo,
    StageInitError,
    StageStart,
    load_source,
    producing_recipe,
    transfer_state,
    upcycle_layer_map,
)


def test_upcycle_layer_maps():
    assert upcycle_layer_map(3, 6, "stack") == [0, 1, 2, 0, 1, 2]
    assert upcycle_layer_map(3, 6, "interleave") == [0, 0, 1, 1, 2, 2]
    assert upcycle_layer_map(24, 48, "stack")[24] == 0
    with pytest.raises(StageInitError, match="multiple"):
        upcycle_layer_map(3, 5)


@pytest.mark.parametrize("method", ["stack", "interleave"])
def test_upcycled_layers_are_exact_copies_in_order(method):
    torch.manual_seed(0)
    source_config = OuroConfig.preset("tiny", num_hidden_layers=2, total_ut_steps=8)
    source = OuroForCausalLM(source_config)
    target_config = source_config.replace(num_hidden_layers=4, total_ut_steps=4)
    state = transfer_state(ModelSource(source_config, source.state_dict(), "mem"), target_config, method)
    target = OuroForCausalLM(target_config)
    target.load_state_dict(state, strict=True)
    order = [0, 1, 0, 1] if method == "stack" else [0, 0, 1, 1]
    for new, old in enumerate(order):
        for (name, p_new), (_, p_old) in zip(
            target.model.layers[new].named_parameters(), source.model.layers[old].named_parameters()
        ):
            assert torch.equal(p_new, p_old), (new, old, name)
    for name in (
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.early_exit_gate.bias",
    ):
        assert torch.equal(target.state_dict()[name], source.state_dict()[name])
    # Copies are independent tensors: training one layer must not move its twin.
    target.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert (
        not torch.equal(target.model.layers[0].mlp.up_proj.weight, target.model.layers[2].mlp.up_proj.weight)
        or method == "interleave"
    )


def test_stacked_pass_is_close_to_two_source_passes_but_not_equal():
    """One pass of the stacked model = two source passes without the final norm in between."""
    torch.manual_seed(0)
    config = OuroConfig.preset("tiny", num_hidden_layers=2, total_ut_steps=2)
    source = OuroForCausalLM(config)
    stacked = OuroForCausalLM(config.replace(num_hidden_layers=4, total_ut_steps=1))
    stacked.load_state_dict(transfer_state(ModelSource(config, source.state_dict(), "mem"), stacked.config))
    ids = torch.randint(0, config.vocab_size, (1, 12))
    two_passes = source.logits(source(ids))
    one_stacked = stacked.logits(stacked(ids))
    # Reproduce the stacked pass by hand: layers 0,1,0,1 of the source, then a single final norm.
    layout_out = source.model
    from ouro.model.attention import AttentionLayout

    layout = AttentionLayout.build(ids)
    h = layout_out.embed_tokens(ids)
    rope = layout_out.rope(layout.positions, h.dtype)
    for layer in [*layout_out.layers, *layout_out.layers]:
        h = layer(h, rope, layout)
    manual = source.lm_head(layout_out.norm(h))
    torch.testing.assert_close(one_stacked, manual, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one_stacked, two_passes, atol=1e-4)


def test_shape_mismatch_names_the_field():
    config = OuroConfig.preset("tiny")
    source = ModelSource(config, OuroForCausalLM(config).state_dict(), "runs/x")
    with pytest.raises(StageInitError, match="model.hidden_size"):
        transfer_state(source, config.replace(hidden_size=128, intermediate_size=344))


def test_missing_init_from_names_the_recipe_that_produces_it(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "warmup.yaml").write_text("trainer:\n  default_root_dir: runs/warmup\n")
    monkeypatch.chdir(tmp_path)
    assert producing_recipe("runs/warmup") == "recipes/warmup.yaml"
    with pytest.raises(StageInitError, match=r"recipes/warmup.yaml.*ouro fit --config recipes/warmup.yaml"):
        load_source("runs/warmup")
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(StageInitError, match="without checkpoints"):
        load_source("runs/empty")


def _fit_tiny(tmp_path: Path, module: OuroLM, steps: int, name: str):
    import lightning as L
    from toy_data import ToyDataModule

    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / name),
        limit_val_batches=2,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=ToyDataModule(vocab_size=module.config.vocab_size))
    path = tmp_path / name / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return trainer, path


def test_init_from_checkpoint_takes_weights_and_optimizer_state_not_data(tmp_path):
    torch.manual_seed(0)
    config = OuroConfig.preset("tiny", total_ut_steps=3)
    first = OuroLM(config)
    _, ckpt = _fit_tiny(tmp_path, first, 5, "warmup")
    source = load_source(tmp_path / "warmup")
    assert source.tokens_seen == first.tokens_seen > 0
    assert source.final_lr == pytest.approx(first.optim.lr)
    assert source.provenance[-1]["tokens"] == first.tokens_seen

    second = OuroLM(
        config.replace(total_ut_steps=2, rope_theta=40000.0),
        init_from=str(tmp_path / "warmup"),
        init_optimizer_state=True,
    )
    second.setup("fit")
    for key, value in first.net.state_dict().items():
        assert torch.equal(second.net.state_dict()[key], value), key
    assert second.stage.previous_final_lr == pytest.approx(first.optim.lr)
    trainer, _ = _fit_tiny(tmp_path, second, 2, "stable")
    assert second.tokens_seen == 2 * 4 * 32  # the new stage counts its own tokens from zero
    assert trainer.optimizers[0].state  # AdamW moments were loaded and then stepped
    meta = torch.load(tmp_path / "stable" / "checkpoints" / "last.ckpt", weights_only=True)["ouro"]
    assert [p["tokens"] for p in meta["provenance"]] == [first.tokens_seen, second.tokens_seen]


def test_init_from_exported_folder_and_upcycle_reports_source_loss(tmp_path, capsys):
    torch.manual_seed(0)
    config = OuroConfig.preset("tiny", num_hidden_layers=2, total_ut_steps=4)
    OuroForCausalLM(config).save_pretrained(tmp_path / "export", dtype=torch.float32)
    module = OuroLM(config.replace(num_hidden_layers=4, total_ut_steps=2), init_from=str(tmp_path / "export"))
    module.setup("fit")
    assert torch.equal(
        module.net.model.layers[2].self_attn.q_proj.weight, module.net.model.layers[0].self_attn.q_proj.weight
    )
    trainer, _ = _fit_tiny(tmp_path, module, 2, "upcycled")
    assert "val/upcycle_source_ce_last" in trainer.callback_metrics


def _manifest(name: str, tokenizer) -> Manifest:
    return Manifest(
        format="pretrain",
        tokenizer=name,
        tokenizer_hash=tokenizer_hash(tokenizer),
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=0,
        documents=1,
        tokens=10,
    )


def test_data_from_another_tokenizer_is_refused_through_the_connection(tmp_path):
    from tokenizers import Tokenizer, models

    ours = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>"))
    theirs = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "b": 1}, unk_token="<|endoftext|>"))
    ours.save(str(tmp_path / "ours.json"))
    source = ModelSource(
        OuroConfig.preset("tiny", vocab_size=2, eos_token_id=0),
        {},
        "runs/previous",
        tokenizer_path=str(tmp_path / "ours.json"),
    )
    info = StageInfo(name="stable")
    info.begin(StageStart(source, "runs/previous"))
    data = PretrainDataModule(sources=["data/a"], val_source=None)
    data.manifests = {"data/a": _manifest("ours", ours)}
    info.connect(data, source.config)  # same tokenizer: accepted
    assert (
        data.connection.source_tokenizer == str(tmp_path / "ours.json") and data.connection.stage == "stable"
    )
    data.manifests["data/b"] = _manifest("theirs", theirs)
    with pytest.raises(
        DataError, match=r"data/b was tokenized with 'theirs'.*init_from runs/previous.*ouro prepare"
    ):
        data.check_connection()
    # Data that cannot say how it was tokenized is refused in one line instead of going unchecked.
    with pytest.raises(StageInitError, match=r"ToyDataModule|not an ouro DataModule"):
        info.connect(object(), source.config)


def test_data_a_trainer_uses_without_connecting_it_is_refused(tmp_path):
    data = PretrainDataModule(sources=["data/a"], val_source=None)
    data.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(DataError, match="was not connected to a model"):
        data.train_dataloader()
