"""OuroConfig: presets, validation messages that name the field, config.json round trip."""

import json

import pytest

from ouro.config import ConfigError, OuroConfig
from ouro.model.looped import count_parameters_on_meta


@pytest.mark.parametrize(("name", "expected"), [("ouro-1.4b", 1_434_652_673), ("ouro-2.6b", 2_667_974_657)])
def test_preset_parameter_count_matches_release(name, expected):
    assert count_parameters_on_meta(OuroConfig.preset(name)) == expected


def test_preset_parameter_count_by_hand():
    c = OuroConfig.preset("ouro-1.4b")
    h, i, v, n = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * c.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 4 * h
    assert count_parameters_on_meta(c) == 2 * v * h + n * per_layer + h + (h + 1)


def test_official_presets_fields():
    c = OuroConfig.preset("ouro-2.6b")
    assert (
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.head_dim,
        c.vocab_size,
        c.total_ut_steps,
    ) == (48, 2048, 5632, 16, 128, 49152, 4)
    assert c.layer_types == ["full_attention"] * 48


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(total_ut_steps=0), "total_ut_steps"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
        (dict(rope_theta=-1.0), "rope_theta"),
        (dict(early_exit_threshold=1.5), "early_exit_threshold"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(use_sliding_window=True), "use_sliding_window"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
        (dict(layer_types=["sliding_attention", "full_attention"]), "layer_types"),
        (dict(attention_dropout=1.0), "attention_dropout"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        OuroConfig.preset("tiny", **changes)
    assert issubclass(ConfigError, ValueError)


def test_odd_head_dim_rejected():
    with pytest.raises(ConfigError, match="num_attention_heads"):
        OuroConfig.preset("tiny", hidden_size=60, num_attention_heads=4, num_key_value_heads=4)  # head_dim 15


def test_unknown_preset():
    with pytest.raises(ConfigError, match="tiny"):
        OuroConfig.preset("nope")


def test_layer_types_follow_layer_count():
    c = OuroConfig.preset("tiny", num_hidden_layers=5)
    assert c.layer_types == ["full_attention"] * 5
    assert c.replace(num_hidden_layers=3).layer_types == ["full_attention"] * 3
    # A list of the wrong length (e.g. from an older config.json) follows the layer count.
    assert OuroConfig.preset("tiny", layer_types=["full_attention"]).layer_types == ["full_attention"] * 2


def test_config_json_round_trip(tmp_path):
    c = OuroConfig.preset("tiny", num_key_value_heads=2, total_ut_steps=3, rope_theta=40000.0)
    path = c.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["model_type"] == "ouro"
    assert data["architectures"] == ["OuroForCausalLM"]
    assert data["auto_map"]["AutoModelForCausalLM"] == "modeling_ouro.OuroForCausalLM"
    assert data["head_dim"] == 16 and data["total_ut_steps"] == 3 and data["num_key_value_heads"] == 2
    loaded = OuroConfig.load(tmp_path)
    # torch_dtype is not a field: it comes back in `extra` and is written again unchanged.
    assert loaded.replace(extra={}) == c
    assert loaded.to_dict() == c.to_dict()
    assert OuroConfig.load(path).to_dict() == data


def test_unknown_keys_survive_round_trip(tmp_path):
    data = OuroConfig.preset("tiny").to_dict()
    data["transformers_version"] = "4.55.0"
    data["some_future_field"] = [1, 2]
    c = OuroConfig.from_dict(data)
    assert c.extra == {
        "transformers_version": "4.55.0",
        "some_future_field": [1, 2],
    }  # torch_dtype is derived
    assert OuroConfig.load(c.save(tmp_path)) == c
    c.save(tmp_path)
    again = json.loads((tmp_path / "config.json").read_text())
    assert again["some_future_field"] == [1, 2] and again["transformers_version"] == "4.55.0"


def test_from_dict_rejects_other_model_and_bad_head_dim():
    data = OuroConfig.preset("tiny").to_dict()
    with pytest.raises(ConfigError, match="model_type"):
        OuroConfig.from_dict({**data, "model_type": "qwen2"})
    with pytest.raises(ConfigError, match="head_dim"):
        OuroConfig.from_dict({**data, "head_dim": 32})


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        OuroConfig.load(tmp_path)
