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


TABLE_1 = {  # stage: (tokens, seq_len, final LR, T, beta, RoPE base), OURO.md §1
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
