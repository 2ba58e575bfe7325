"""Every shipped recipe parses, and the stage recipes carry the paper's Table 1 values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "recipes"
STAGES = ["warmup", "stable", "ct_annealing", "longct", "midtraining", "reasoning_sft", "gate"]


def _combos() -> list[list[Path]]:
    """Each standalone recipe, and each overlay composed with its base."""
    combos = [[p] for p in sorted(RECIPES.glob("*.yaml"))] + [
        [p] for p in sorted((RECIPES / "tiny").glob("*.yaml"))
    ]
    for base_dir in (RECIPES, RECIPES / "tiny"):
        for overlay in sorted((base_dir / "ouro-2.6b").glob("*.yaml")):
            combos.append([base_dir / overlay.name, overlay])
    return combos


def resolved(paths: list[Path], capsys) -> dict:
    from ouro.trainer_cli import run_trainer_cli

    args = ["fit"]
    for path in paths:
        args += ["--config", str(path)]
    with pytest.raises(SystemExit) as stop:
        run_trainer_cli([*args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    "paths", _combos(), ids=lambda ps: "+".join(p.relative_to(RECIPES).as_posix() for p in ps)
)
def test_recipe_parses(paths, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = resolved(paths, capsys)
    assert config["trainer"]["default_root_dir"].startswith("runs/")
    assert config["model"]["model"]["vocab_size"] > 0


def _callback(config: dict, name: str) -> dict | None:
    for callback in config["trainer"]["callbacks"] or []:
        if callback["class_path"].endswith(name):
            return callback["init_args"]
    return None


TABLE_1 = {  # stage: (tokens, seq_len, final LR, T, beta, RoPE base), docs/model.md §1
    "warmup": (3e12, 4096, 3e-4, 8, 0.1, 1e4),
    "stable": (3e12, 4096, 3e-4, 4, 0.05, 1e4),
    "ct_annealing": (1.4e12, 16384, 3e-5, 4, 0.05, 4e4),
    "longct": (20e9, 65536, 3e-5, 4, 0.05, 1e6),
    "midtraining": (300e9, 32768, 1e-5, 4, 0.05, 1e6),
}


@pytest.mark.parametrize("stage", list(TABLE_1))
def test_stage_recipes_match_table_1(stage, capsys, monkeypatch):
    from ouro.callbacks import TokenBudget, WarmupStableDecay

    monkeypatch.chdir(ROOT)
    config = resolved([RECIPES / f"{stage}.yaml"], capsys)
    tokens, seq_len, final_lr, steps, beta, rope = TABLE_1[stage]
    model = config["model"]
    assert model["model"]["total_ut_steps"] == steps and model["entropy_coef"] == beta
    assert model["model"]["rope_theta"] == rope and config["data"]["init_args"]["seq_len"] == seq_len
    assert model["optimizer"]["betas"] == [0.9, 0.95] and model["optimizer"]["weight_decay"] == 0.1
    assert config["trainer"]["gradient_clip_val"] == 1.0 and config["trainer"]["precision"] == "bf16-mixed"
    budget = TokenBudget(**_callback(config, "TokenBudget"))
    assert budget.max_tokens == tokens
    schedule = WarmupStableDecay(**_callback(config, "WarmupStableDecay"))
    schedule.total_tokens = schedule.total_tokens or budget.max_tokens
    peak = model["optimizer"]["lr"]
    end = schedule.lr_at(tokens, peak)
    assert end == pytest.approx(final_lr, rel=1e-6)
    # Batch: 8M tokens per optimizer step (4M ramped to 8M in the warmup stage).
    trainer, data = config["trainer"], config["data"]["init_args"]
    per_micro_step = trainer["devices"] * trainer["num_nodes"] * data["batch_size"] * seq_len
    per_step = per_micro_step * trainer["accumulate_grad_batches"]
    assert per_step == (4 * 2**20 if stage == "warmup" else 8 * 2**20)
    ramp = _callback(config, "BatchSizeRamp")
    assert (ramp is not None) == (stage == "warmup")


def test_annealing_stages_start_from_the_previous_lr(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for stage in ("ct_annealing", "midtraining"):
        config = resolved([RECIPES / f"{stage}.yaml"], capsys)
        assert _callback(config, "WarmupStableDecay")["init_lr_from_previous"] is True


def test_stages_chain_through_init_from(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    previous = {
        "stable": "runs/warmup",
        "ct_annealing": "runs/stable",
        "longct": "runs/ct_annealing",
        "midtraining": "runs/longct",
        "reasoning_sft": "runs/midtraining",
        "gate": "runs/midtraining",
    }
    for stage, source in previous.items():
        assert resolved([RECIPES / f"{stage}.yaml"], capsys)["model"]["init_from"] == source
    big = resolved([RECIPES / "stable.yaml", RECIPES / "ouro-2.6b" / "stable.yaml"], capsys)
    assert big["model"]["model"]["num_hidden_layers"] == 48 and big["model"]["upcycle"] == "stack"
    assert big["model"]["init_from"] == "runs/warmup"
    assert resolved([RECIPES / "gate.yaml"], capsys)["model"]["objective"] == "stage2"


ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
ARCHITECTURE += ("num_key_value_heads", "max_position_embeddings", "eos_token_id")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_recipes_compose_the_official_architectures(stage, capsys, monkeypatch):
    from ouro.config import OuroConfig

    monkeypatch.chdir(ROOT)
    combos = [([RECIPES / f"{stage}.yaml"], "ouro-1.4b")]
    if stage != "warmup":  # the 2.6B branch upcycles the warmup model
        combos.append(([RECIPES / f"{stage}.yaml", RECIPES / "ouro-2.6b" / f"{stage}.yaml"], "ouro-2.6b"))
    for paths, preset in combos:
        composed = resolved(paths, capsys)["model"]["model"]
        official = OuroConfig.preset(preset, eos_token_id=0)
        assert {k: composed[k] for k in ARCHITECTURE} == {k: getattr(official, k) for k in ARCHITECTURE}
        assert composed["layer_types"] is None  # filled from num_hidden_layers, not 24 defaults
        assert OuroConfig(**composed).layer_types == ["full_attention"] * official.num_hidden_layers


def test_architectures_are_written_once_in_recipes_models():
    """No stage recipe repeats an architecture: they include recipes/models/*.yaml."""
    for path in sorted(RECIPES.rglob("*.yaml")):
        if path.parent.name == "models" or path.name == "quickstart.yaml" or "pipelines" in path.parts:
            continue
        assert "hidden_size" not in path.read_text(), path
        if path.parent.name != "ouro-2.6b":
            assert "<<: !include " in path.read_text(), path


def test_tiny_recipes_compose_the_tiny_model(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    small = resolved([RECIPES / "tiny" / "warmup.yaml"], capsys)["model"]["model"]
    big = resolved([RECIPES / "tiny" / "stable.yaml", RECIPES / "tiny" / "ouro-2.6b" / "stable.yaml"], capsys)
    assert (small["hidden_size"], small["num_hidden_layers"], small["vocab_size"]) == (64, 2, 4096)
    assert (small["total_ut_steps"], small["rope_theta"]) == (8, 10000.0)
    assert big["model"]["model"]["num_hidden_layers"] == 4 and big["model"]["model"]["hidden_size"] == 64


def test_include_is_relative_to_the_including_file_and_local_keys_win(tmp_path, capsys, monkeypatch):
    from ouro.recipe_yaml import read_recipe

    (tmp_path / "models").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "models" / "base.yaml").write_text("vocab_size: 512\nhidden_size: 64\nnum_hidden_layers: 2\n")
    (tmp_path / "models" / "deep.yaml").write_text("<<: !include base.yaml\nnum_hidden_layers: 3\n")
    recipe = tmp_path / "stages" / "s.yaml"
    recipe.write_text(
        "trainer: {default_root_dir: runs/s}\n"
        "model:\n  model:\n    <<: !include ../models/deep.yaml\n    hidden_size: 32\n"
        "data: {class_path: toy_data.ToyDataModule}\n"
    )
    expected = {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 3}
    assert read_recipe(recipe)["model"]["model"] == expected
    monkeypatch.chdir(tmp_path / "models")  # jsonargparse resolves the include against the recipe, not cwd
    model = resolved([recipe], capsys)["model"]["model"]
    assert {k: model[k] for k in expected} == expected


def test_missing_include_names_the_file(tmp_path, capsys):
    from ouro.recipe_yaml import RecipeError, read_recipe

    recipe = tmp_path / "s.yaml"
    recipe.write_text("model:\n  model:\n    <<: !include nowhere.yaml\n")
    with pytest.raises(RecipeError, match="nowhere.yaml"):
        read_recipe(recipe)


def test_gpu_recipes_compile_and_cpu_recipes_do_not():
    """The fast path is the default where it pays: compiled layers on GPU; CPU runs are shorter than a compile.
    (Read as files: every recipe also parses through ``ouro fit`` in `test_recipe_parses`.)"""
    from ouro.recipe_yaml import read_recipe

    for path in sorted(RECIPES.glob("*.yaml")) + sorted((RECIPES / "tiny").glob("*.yaml")):
        recipe = read_recipe(path)
        on_gpu = recipe["trainer"].get("accelerator") == "gpu"
        assert recipe["model"].get("compile", False) is on_gpu, path
