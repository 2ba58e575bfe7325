"""`ouro export` to the official layout, and loading official-format folders, checkpoints and run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, write_fit_checkpoint, write_word_tokenizer
from safetensors import safe_open
from safetensors.torch import save_file

from ouro.checkpoints import SourceError, load_model, read_source
from ouro.cli import main
from ouro.hub.export import ExportError, export, parse_size
from ouro.model import OuroForCausalLM


def config_and_state(source):
    loaded = read_source(source)
    return loaded.config, loaded.state_dict


PROVENANCE = [
    {"stage": "warmup", "recipe": "recipes/warmup.yaml", "tokens": 2_000_000, "metrics": {"val/loss": 4.25}},
    {"stage": "stable", "recipe": "recipes/stable.yaml", "tokens": 3_000_000, "metrics": {"val/loss": 3.5}},
]


def make_model(seed: int = 0) -> OuroForCausalLM:
    return build_tiny_model(seed, gate_std=0.5)


def write_checkpoint(
    path: Path, model: OuroForCausalLM, tokenizer: Path | None, tokens: int = 5_000_000
) -> Path:
    """What `ouro fit` saves after two stages (`PROVENANCE`), at step 7."""
    return write_fit_checkpoint(
        path, model, tokenizer=tokenizer, tokens_seen=tokens, provenance=PROVENANCE, global_step=7
    )


def bf16_copy(model: OuroForCausalLM) -> OuroForCausalLM:
    """The model as the bf16 export stores it, back in fp32."""
    copy = OuroForCausalLM(model.config).eval()
    copy.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    return copy


@pytest.fixture()
def setup(tmp_path):
    model = make_model()
    (tmp_path / "tok").mkdir()
    tok = write_word_tokenizer(tmp_path / "tok" / "tokenizer.json")
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", model, tok)
    return model, tok, ckpt


def test_export_writes_the_official_layout(setup, tmp_path):
    model, tok, ckpt = setup
    out = export(str(ckpt), str(tmp_path / "export"))
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "configuration_ouro.py",
        "modeling_ouro.py",
        "README.md",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ouro" and config["architectures"] == ["OuroForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ouro.OuroForCausalLM"
    assert (
        config["total_ut_steps"] == 4
        and config["num_hidden_layers"] == 2
        and config["torch_dtype"] == "bfloat16"
    )
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.input_layernorm_2.weight").dtype == torch.bfloat16
    assert keys == set(model.state_dict())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"] and tok_config["eos_token"] == "<|im_end|>"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 0] and generation["pad_token_id"] == 0
    card = (out / "README.md").read_text()
    for text in (
        "warmup",
        "recipes/stable.yaml",
        "2M",
        "3M",
        "val/loss=3.5",
        "5,000,000",
        "trust_remote_code",
    ):
        assert text in card
    assert (out / "modeling_ouro.py").read_text() == (
        Path(__file__).parents[1] / "ouro" / "hub" / "remote_code" / "modeling_ouro.py"
    ).read_text()
    # Round trip: the export loads back with the bf16-rounded weights and the provenance.
    loaded = read_source(out)
    assert loaded.provenance == PROVENANCE and loaded.tokens_seen == 5_000_000
    reloaded = load_model(out)[0]
    ids = torch.randint(0, 512, (2, 9))
    expected = bf16_copy(model)
    with torch.no_grad():
        a, b = reloaded(ids), expected(ids)
    for step in range(4):
        torch.testing.assert_close(reloaded.logits(a, step), expected.logits(b, step), rtol=0, atol=0)


def test_export_from_a_run_directory_takes_the_last_checkpoint(setup, tmp_path):
    model, tok, ckpt = setup
    older = make_model(seed=1)
    write_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001.ckpt", older, tok)
    out = export(str(tmp_path / "run"), str(tmp_path / "export"), dtype="float32")
    state = load_model(out)[0].state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)


def test_sharded_export_has_an_index_and_loads(setup, tmp_path):
    model, tok, ckpt = setup
    out = export(str(ckpt), str(tmp_path / "export"), max_shard_size="100KB", dtype="float32")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())
    config, state = config_and_state(out)
    assert config.replace(extra={}) == model.config.replace(bos_token_id=1, pad_token_id=0)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1234") == 1234
    with pytest.raises(ExportError, match="max_shard_size"):
        parse_size("big")


def test_failed_exports_leave_nothing_that_looks_complete(setup, tmp_path):
    model, tok, ckpt = setup
    no_tok = write_checkpoint(tmp_path / "other.ckpt", model, None)
    with pytest.raises(ExportError, match="--tokenizer"):
        export(str(no_tok), str(tmp_path / "export"))
    # Weights that do not match the config fail after writing started: the temporary folder is removed.
    bad = torch.load(ckpt, weights_only=True)
    del bad["state_dict"]["net.lm_head.weight"]
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(SourceError, match="lm_head"):
        export(str(tmp_path / "bad.ckpt"), str(tmp_path / "export"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "other.ckpt", "run", "tok"]
    # An existing export is kept unless --overwrite, and replaced only by a complete one.
    out = export(str(ckpt), str(tmp_path / "export"))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ExportError, match="--overwrite"):
        export(str(ckpt), str(out))
    with pytest.raises(SourceError):
        export(str(tmp_path / "bad.ckpt"), str(out), overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    export(str(ckpt), str(out), overwrite=True, dtype="float32")
    assert (out / "model.safetensors").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tokenizer_override_and_cli(setup, tmp_path, capsys):
    model, tok, ckpt = setup
    other = write_word_tokenizer(tmp_path / "other_tokenizer.json")
    main(
        ["export", str(ckpt), str(tmp_path / "export"), "--tokenizer", str(other), "--repo_name", "org/tiny"]
    )
    assert (tmp_path / "export" / "tokenizer.json").read_text() == other.read_text()
    assert "# org/tiny" in (tmp_path / "export" / "README.md").read_text()


def write_official_folder(folder: Path, model: OuroForCausalLM) -> Path:
    """An official Ouro folder written independently of `ouro`: hand-made config.json and bf16 safetensors."""
    folder.mkdir(parents=True)
    c = model.config
    config = {
        "architectures": ["OuroForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_ouro.OuroConfig",
            "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM",
        },
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "layer_types": ["full_attention"] * c.num_hidden_layers,
        "max_position_embeddings": 65536,
        "max_window_layers": c.num_hidden_layers,
        "model_type": "ouro",
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": c.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "total_ut_steps": 4,
        "early_exit_threshold": 1.0,
        "transformers_version": "4.55.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": c.vocab_size,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return folder


def test_official_folder_loads_for_further_training(tmp_path):
    model = make_model(seed=3)
    folder = write_official_folder(tmp_path / "Ouro-tiny", model)
    expected = bf16_copy(model)
    ids = torch.randint(0, 512, (2, 11))
    loaded = load_model(folder)[0]
    config, state = config_and_state(folder)
    assert config.total_ut_steps == 4 and config.extra["transformers_version"] == "4.55.0"
    fresh = OuroForCausalLM(config)
    fresh.load_state_dict(state)
    with torch.no_grad():
        ref = expected(ids)
        for candidate in (loaded, fresh.eval()):
            out = candidate(ids)
            for step in range(4):
                torch.testing.assert_close(
                    candidate.logits(out, step), expected.logits(ref, step), rtol=0, atol=0
                )


def test_read_source_reads_checkpoints_and_run_dirs(setup, tmp_path):
    model, tok, ckpt = setup
    for source in (ckpt, tmp_path / "run"):
        config, state = config_and_state(source)
        assert config == model.config
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SourceError, match="checkpoints"):
        config_and_state(tmp_path / "tok")
    with pytest.raises(SourceError, match="does not exist"):
        config_and_state(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=".ckpt"):
        config_and_state(tmp_path / "notes.txt")
