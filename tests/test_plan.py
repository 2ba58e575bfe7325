"""`ouro plan`: fake-tensor steps against measured CPU steps, the planned attention kernel against SDPA, planned
FLOPs against the analytic count, and the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from ouro.config import OuroConfig
from ouro.distributed import OuroFSDPStrategy
from ouro.model import flops_per_token
from ouro.module import OuroLM
from ouro.plan import gpu_named, make_plan, preflight
from ouro.plan.cli import pipeline_line, pipeline_stages
from ouro.plan.flash import flash_attention
from ouro.plan.gpus import GPU
from ouro.plan.live_memory import LiveStorages
from ouro.plan.recorder import StepRecorder
from ouro.plan.spec import PlanSpec
from ouro.plan.step import count_step, fake_world
from ouro.plan.wrapping import wrap

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    total_ut_steps=4,
)
SMALL = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    total_ut_steps=3,
)


def _spec(model: dict, checkpointing: bool, micro_batch: int, seq_len: int, strategy=None, world: int = 1):
    return PlanSpec(
        module=dict(model=dict(model), activation_checkpointing=checkpointing, loss_chunk_size=256),
        strategy=strategy,
        precision="32-true",
        world_size=world,
        micro_batch=micro_batch,
        seq_len=seq_len,
        gradient_clip_val=1.0,
    )


def measured_peak(spec: PlanSpec, steps: int = 2) -> int:
    """Peak bytes of live tensor storages during the last of ``steps`` real training steps on CPU."""
    counter = LiveStorages()
    with StepRecorder(counter), counter.resizes_counted():
        module = OuroLM(**spec.module)
        step = wrap(module, spec.strategy, spec.precision, torch.device("cpu"))
        optimizer = module.configure_optimizers()
        generator = torch.Generator().manual_seed(dist.get_rank() if dist.is_initialized() else 0)
        for index in range(steps):
            tokens = torch.randint(
                0, module.config.vocab_size, (spec.micro_batch, spec.seq_len + 1), generator=generator
            )
            batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
            if index == steps - 1:
                counter.reset_peak()
            with step.forward_context():
                loss = step.loss(batch)
            loss.backward()
            del loss
            step.clip_gradients(spec.gradient_clip_val)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return counter.peak


# ------------------------------------------------------------------------------------------ the counter
def test_live_storages_count_allocations_views_frees_and_resizes():
    counter = LiveStorages()
    with StepRecorder(counter), counter.resizes_counted():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        view = a[:10]  # a view: no new storage
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        assert counter.live == 8000
        del b
        assert counter.live == 4000 and counter.peak == 8000
        a.untyped_storage().resize_(0)  # how FSDP frees a gathered parameter
        assert counter.live == 0
        a.untyped_storage().resize_(400)
        assert counter.live == 400
        del view
    assert counter.peak == 8000


# ------------------------------------------------------------------------------------- planned kernels
def test_planned_flash_attention_matches_sdpa_with_gradients():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 4, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(2, 12, 2, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    v = torch.randn(2, 12, 2, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    out, lse = flash_attention(q, k, v)
    reference = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert lse.shape == (2, 4, 12) and lse.dtype == torch.float32
    grad = torch.randn(out.shape, dtype=out.dtype, generator=generator)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(reference, (q, k, v), grad)
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_planned_attention_memory_grows_with_sequence_not_its_square():
    peaks = []
    for seq in (2048, 4096):
        spec = replace(
            _spec(TINY, True, 1, seq), module={**_spec(TINY, True, 1, seq).module, "loss_chunk_size": 64}
        )
        with fake_world(1):
            peaks.append(count_step(spec, fake=True).forward_backward_peak)
    # 2x the tokens: 2x the activations, while a seq x seq score matrix would have grown 4x
    assert 1.8 < peaks[1] / peaks[0] < 2.2


def test_planned_flops_count_every_pass_and_tell_recomputation_apart():
    config = OuroConfig(**TINY)
    for checkpointing in (False, True):
        spec = _spec(TINY, checkpointing, 2, 32)
        with fake_world(1):
            count = count_step(spec, fake=True)
        expected = flops_per_token(config, 32) * count.tokens  # analytic, x3 for training, all passes
        assert count.model_flops == pytest.approx(expected, rel=0.02)
        forward_of_layers = expected / 3 - config.total_ut_steps * 2 * count.tokens * (
            config.hidden_size * config.vocab_size + config.hidden_size
        )
        recompute = count.hardware_flops - count.model_flops
        assert recompute == (pytest.approx(forward_of_layers, rel=0.02) if checkpointing else 0)


# ------------------------------------------------------------------------------- trust: plan vs measured
@pytest.mark.parametrize(
    "model, checkpointing, micro_batch, seq_len",
    [(TINY, False, 4, 64), (SMALL, True, 2, 128), (SMALL, False, 1, 256)],
    ids=["tiny", "small-checkpointed", "small"],
)
def test_plan_matches_the_measured_peak_of_a_real_step(model, checkpointing, micro_batch, seq_len):
    spec = _spec(model, checkpointing, micro_batch, seq_len)
    with fake_world(1):
        planned = count_step(spec, fake=True).peak_bytes
    measured = measured_peak(spec)
    assert planned / measured == pytest.approx(1.0, abs=0.10), (planned, measured)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        spec = _spec(SMALL, True, 2, 64, OuroFSDPStrategy(sharding_strategy="SHARD_GRAD_OP"), world)
        peak = measured_peak(spec)
        Path(out, f"rank{rank}.json").write_text(json.dumps(peak))
    finally:
        dist.destroy_process_group()


def test_plan_matches_the_measured_peak_on_two_gloo_ranks_with_fsdp(tmp_path):
    mp.spawn(_fsdp_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    measured = json.loads((tmp_path / "rank0.json").read_text())
    spec = _spec(SMALL, True, 2, 64, OuroFSDPStrategy(sharding_strategy="SHARD_GRAD_OP"), 2)
    with fake_world(2):
        count = count_step(spec, fake=True)
    assert count.peak_bytes / measured == pytest.approx(1.0, abs=0.10), (count.peak_bytes, measured)
    # sharded over two ranks: each holds half the parameters (padding aside)
    full = OuroLM(model=OuroConfig(**SMALL)).net.num_parameters() * 4
    assert count.params_bytes == pytest.approx(full / 2, rel=0.01)


# ------------------------------------------------------------------------------------------ the command
def _ouro(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ouro.cli", "plan", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_ouro_plan_json_reports_memory_fit_and_time():
    result = _ouro("--config", "recipes/tiny/warmup.yaml", "--gpu", "a100-40gb", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    for key in ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "peak_bytes"):
        assert plan[key] > 0
    assert plan["gpu_bytes"] == int(39.39 * 2**30) and plan["fits"] is True
    assert plan["max_micro_batch"] > 8
    assert plan["flops_per_token"] > 0 and plan["est_days"] > 0
    resident = plan["params_bytes"] + plan["grads_bytes"] + plan["optimizer_bytes"]
    assert plan["activations_bytes"] == plan["peak_bytes"] - resident


def test_ouro_plan_refuses_an_unknown_gpu_in_one_line():
    result = _ouro("--config", "recipes/tiny/warmup.yaml", "--gpu", "tpu-v9")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "h100-80gb" in result.stderr


# ------------------------------------------------------------------------------------- before ouro fit
def _fit_objects(accelerator):
    trainer = SimpleNamespace(
        accelerator=accelerator,
        strategy=None,
        precision="32-true",
        num_nodes=1,
        num_devices=1,
        accumulate_grad_batches=1,
        gradient_clip_val=1.0,
        default_root_dir="runs/tiny",
    )
    module = OuroLM(model=OuroConfig(**TINY), loss_chunk_size=256)
    return trainer, module, SimpleNamespace(batch_size=4, seq_len=64)


def test_fit_plans_before_a_gpu_run_and_warns_in_one_line(monkeypatch, capsys):
    trainer, module, data = _fit_objects(CUDAAccelerator())
    monkeypatch.setattr(preflight, "device_gpu", lambda: GPU("Tiny GPU", 2**20, 0.0))
    warning = preflight.plan_before_fit(trainer, module, data)
    assert warning is not None and "\n" not in warning and "--skip_plan" in warning
    assert capsys.readouterr().err.strip() == warning
    spec = _spec(TINY, False, 4, 64)
    with fake_world(1):
        peak = count_step(spec, fake=True).peak_bytes
    assert f"{peak / 2**30:.1f} GiB" in warning
    monkeypatch.setattr(preflight, "device_gpu", lambda: GPU("Large GPU", 2**40, 0.0))
    assert preflight.plan_before_fit(trainer, module, data) is None
    assert preflight.plan_before_fit(trainer, module, data, skip=True) is None


def test_fit_on_cpu_does_not_plan(monkeypatch):
    trainer, module, data = _fit_objects(CPUAccelerator())
    planned = []
    monkeypatch.setattr(preflight, "make_plan", lambda *args, **kwargs: planned.append(args))
    assert preflight.plan_before_fit(trainer, module, data) is None
    assert planned == []


def test_a_pipeline_plan_reads_every_stage_and_sums_tokens_and_days(tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("stages:\n  - recipe: a.yaml\n  - name: b\n    recipe: [b.yaml, b-2.6b.yaml]\n")
    assert pipeline_stages(str(pipeline)) == [["a.yaml"], ["b.yaml", "b-2.6b.yaml"]]
    gpu = gpu_named("h100-80gb")
    plans = [
        make_plan(replace(_spec(TINY, False, 2, 32), max_tokens=tokens), gpu, search_micro_batch=False)
        for tokens in (3 * 10**12, 10**12)
    ]
    line = pipeline_line(plans, gpu.label)
    days = plans[0].est_days + plans[1].est_days
    assert line == f"pipeline: 4.00T tokens on up to 1 H100 80GB at 40% MFU: {days:.1f} days"
    assert plans[0].est_days == pytest.approx(3 * plans[1].est_days)
