"""Multi-process training on CPU with gloo.

* DDP: ``ouro fit`` (`ouro.cli.main`) under torchrun with 2 processes gives the per-step losses and weights of a 1-process run
  with the same global batch, and a resumed run continues the same curve.
* FSDP1 (``SHARD_GRAD_OP`` / ``FULL_SHARD``) and FSDP2 (``reshard_after_forward`` False / True) on the looped
  model, with and without activation checkpointing: gradients equal a 1-process reference, and the all-gathers
  per step follow the counts in docs/scale-out.md (kept-gathered strategies gather each layer once per step, not
  once per pass). ``OuroFSDPStrategy`` through ``ouro fit`` gives the 1-process curve and sharded checkpoints.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from spawn_ranks import free_port, nodes
from torch.utils.data import DataLoader, Dataset, Sampler

from ouro.config import OuroConfig
from ouro.data.base import OuroDataModule
from ouro.distributed import (
    OuroFSDP2Strategy,
    OuroFSDPStrategy,
    all_gathers,
    apply_fsdp2,
    count_collectives,
    resolve_strategy,
    wrap_policy,
)
from ouro.model import OuroForCausalLM

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SEQ, MAX_STEPS, RESUME_AT, GLOBAL_BATCH = 32, 4, 2, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------- data and recorder
class _Blocks(Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.tokens[index]
        return {"input_ids": block[:-1], "labels": block[1:]}


class _RankSampler(Sampler):
    """Rows ``rank, rank + world, ...`` in order (a streaming loader's split), skipping ``skip`` rows once (the
    rows consumed before a checkpoint, as a resumable loader does)."""

    def __init__(self, length: int, rank: int, world: int, skip: int) -> None:
        self.rows, self.skip = list(range(rank, length, world)), skip

    def __len__(self) -> int:  # the whole epoch, skipped rows included: Lightning counts them as done
        return len(self.rows)

    def __iter__(self):
        rows, self.skip = self.rows[self.skip :], 0
        return iter(rows)


class FixedTokens(OuroDataModule):
    """Deterministic in-memory token blocks, ``global_batch x steps_per_epoch`` per epoch, split over ranks like
    a streaming loader (no shuffling), resuming at the batch where the checkpoint was taken."""

    def __init__(
        self, vocab_size: int, seq_len: int, global_batch: int, steps_per_epoch: int, seed: int = 7
    ) -> None:
        super().__init__()
        self.vocab_size, self.seq_len, self.global_batch = vocab_size, seq_len, global_batch
        self.steps_per_epoch, self.seed = steps_per_epoch, seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        count = self.global_batch * self.steps_per_epoch
        starts = torch.randint(0, self.vocab_size, (count, 1), generator=generator)
        tokens = (
            starts + torch.arange(self.seq_len + 1)
        ) % self.vocab_size  # counting: learnable in a few steps
        world, micro = self.trainer.world_size, self.global_batch // self.trainer.world_size
        # Batches already trained on in this epoch (> 0 after a mid-epoch resume; "completed" lags by one there).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        sampler = _RankSampler(count, self.trainer.global_rank, world, skip=done * micro)
        return DataLoader(_Blocks(tokens), batch_size=micro, sampler=sampler)


class LossRecorder(L.Callback):
    """Writes every step's loss and tokens_seen (and, without sharding, the final weights) into ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        # Elements this rank's optimiser decays (sharded strategies: its shard; summed over ranks by the test).
        decayed = sum(
            (p.to_local() if hasattr(p, "to_local") else p).numel()
            for group in trainer.optimizers[0].param_groups
            if group["weight_decay"] > 0
            for p in group["params"]
        )
        units = sum(
            isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in trainer.strategy.model.modules()
        )
        self.rows.append(
            dict(
                step=trainer.global_step,
                loss=float(outputs["loss"]),
                tokens_seen=int(pl_module.tokens_seen),
                decayed_numel=decayed,
                fsdp_units=units,
            )
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))
        # Sharded strategies' state_dict() is a collective with sharded values: compare replicated weights only.
        if trainer.global_rank == 0 and type(trainer.strategy).__name__ in (
            "DDPStrategy",
            "SingleDeviceStrategy",
        ):
            torch.save(
                {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
                self.out_dir / "weights.pt",
            )


def _recipe(tmp: Path, name: str, world: int, ckpt_dir: Path, strategy: str | dict = "ddp") -> Path:
    model = asdict(OuroConfig.preset("tiny", total_ut_steps=3))
    model.pop("extra")
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": world,
            "num_nodes": 1,
            "strategy": strategy if world > 1 else "auto",
            "max_steps": MAX_STEPS,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp / name),
            "use_distributed_sampler": False,  # the data module splits rows over ranks itself, as litdata does
            "callbacks": [
                {"class_path": "test_distributed.LossRecorder", "init_args": {"out_dir": str(tmp / name)}},
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(ckpt_dir),
                        "every_n_train_steps": RESUME_AT,
                        "save_top_k": -1,
                    },
                },
            ],
        },
        "model": {"model": model, "optimizer": {"lr": 3e-3}},
        "data": {
            "class_path": "test_distributed.FixedTokens",
            "init_args": {
                "vocab_size": model["vocab_size"],
                "seq_len": SEQ,
                "global_batch": GLOBAL_BATCH,
                "steps_per_epoch": MAX_STEPS + 1,
            },
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _torchrun(args: list[str], nproc: int) -> None:
    """``torchrun -m test_distributed ARGS``: `ouro.cli.main` (the `ouro` command), see the ``__main__`` block."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={_free_port()}",
        "-m",
        "test_distributed",
        *args,
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _world_losses(run_dir: Path, world: int) -> tuple[list[float], list[int]]:
    """Per-step loss of the whole world (mean of the ranks' means: equal token counts) and tokens_seen."""
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(world)]
    losses = [sum(rows[i]["loss"] for rows in ranks) / world for i in range(len(ranks[0]))]
    return losses, [row["tokens_seen"] for row in ranks[0]]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], list[int], dict, int]:
    """One process, the same global batch, run in this process (sys.path already holds this module)."""
    from ouro.trainer_cli import run_trainer_cli

    tmp = tmp_path_factory.mktemp("single")
    run_trainer_cli(["fit", "--config", str(_recipe(tmp, "single", 1, tmp / "ckpt"))])
    losses, tokens = _world_losses(tmp / "single", 1)
    decayed = json.loads((tmp / "single" / "rank0.json").read_text())[0]["decayed_numel"]
    return losses, tokens, torch.load(tmp / "single" / "weights.pt", weights_only=True), decayed


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes with DDP on one node under torchrun, through the real `ouro fit`; its folder."""
    tmp = tmp_path_factory.mktemp("ddp")
    _torchrun(["fit", "--config", str(_recipe(tmp, "ddp", 2, tmp / "ckpt_ddp"))], nproc=2)
    return tmp


def test_ddp_two_processes_match_one_process_and_resume(ddp_run: Path, single_run) -> None:
    tmp_path = ddp_run
    single, single_tokens, single_weights, single_decayed = single_run
    ddp, ddp_tokens = _world_losses(tmp_path / "ddp", 2)
    assert len(ddp) == len(single) == MAX_STEPS
    assert ddp[-1] < ddp[0]  # it trains
    # Tolerance: fp32 with gradients averaged in a different order (allreduce vs one batch): ~1e-6 relative.
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-4, atol=1e-5)
    assert ddp_tokens == single_tokens == [GLOBAL_BATCH * SEQ * (i + 1) for i in range(MAX_STEPS)]
    assert json.loads((tmp_path / "ddp" / "rank0.json").read_text())[0]["decayed_numel"] == single_decayed > 0
    ddp_weights = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    # AdamW turns rounding-level gradient differences on near-zero gradients into steps of up to ~lr, so the
    # weights agree to a small fraction of lr (3e-3), not to fp32 precision.
    for name, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-3, atol=1e-4, msg=name)

    # Resume the 2-process run from its mid-epoch checkpoint: the continued curve is the same.
    ckpt = tmp_path / "ckpt_ddp" / f"epoch=0-step={RESUME_AT}.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in (tmp_path / "ckpt_ddp").iterdir())
    recipe = _recipe(tmp_path, "resumed", 2, tmp_path / "ckpt_resumed")
    _torchrun(["fit", "--config", str(recipe), "--ckpt_path", str(ckpt)], nproc=2)
    resumed, resumed_tokens = _world_losses(tmp_path / "resumed", 2)
    assert len(resumed) == MAX_STEPS - RESUME_AT
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(ddp[RESUME_AT:]), rtol=1e-5, atol=1e-6)
    assert resumed_tokens == ddp_tokens[RESUME_AT:]


def _two_nodes(tmp: Path, name: str, launcher: str) -> None:
    """The DDP stage as two "nodes" of one process each on this machine (``NODE_RANK`` 0 and 1, the master on
    127.0.0.1), started by Lightning itself or by one torchrun per node; the commands docs/scale-out.md gives."""
    port = str(free_port())
    fit = ["fit", "--config", str(_recipe(tmp, name, 2, tmp / f"ckpt_{name}"))]
    fit += ["--trainer.num_nodes", "2", "--trainer.devices", "1"]
    if launcher == "lightning":
        commands = [
            (
                ["-m", "spawn_ranks", *fit],
                {"NODE_RANK": str(k), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            )
            for k in (0, 1)
        ]
    else:
        commands = [
            (
                ["-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={k}", "--nproc_per_node=1"]
                + ["--master_addr=127.0.0.1", f"--master_port={port}", "-m", "spawn_ranks", *fit],
                {},
            )
            for k in (0, 1)
        ]
    nodes(commands)


def test_two_nodes_reach_the_weights_of_one_node(tmp_path: Path, ddp_run: Path) -> None:
    """Lightning's own multi-node launch and torchrun with two nodes train the 2-process stage of one node to
    the same losses, tokens and weights (the same gloo collectives in the same order)."""
    reference_losses, reference_tokens = _world_losses(ddp_run / "ddp", 2)
    reference = torch.load(ddp_run / "ddp" / "weights.pt", weights_only=True)
    for launcher in ("lightning", "torchrun"):
        _two_nodes(tmp_path, launcher, launcher)
        losses, tokens = _world_losses(tmp_path / launcher, 2)
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference_losses), rtol=1e-6, atol=0)
        assert tokens == reference_tokens
        weights = torch.load(tmp_path / launcher / "weights.pt", weights_only=True)
        for name, value in reference.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-6, atol=1e-7, msg=f"{launcher}: {name}")


# -------------------------------------------------------------------------------------------------- FSDP
@pytest.mark.parametrize("strategy", ["OuroFSDPStrategy", "OuroFSDP2Strategy"])
def test_lightning_fsdp_strategies_on_cpu(tmp_path: Path, single_run, strategy: str) -> None:
    """The FSDP strategies through `ouro fit` (2 processes, gloo): the 1-process curve, sharded checkpoints."""
    init_args = (
        {"sharding_strategy": "SHARD_GRAD_OP"} if strategy == "OuroFSDPStrategy" else {"param_dtype": None}
    )
    spec = {"class_path": f"ouro.distributed.{strategy}", "init_args": init_args}
    _torchrun(["fit", "--config", str(_recipe(tmp_path, "fsdp", 2, tmp_path / "ckpt", spec))], nproc=2)
    losses, tokens = _world_losses(tmp_path / "fsdp", 2)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(single_run[0]), rtol=1e-4, atol=1e-5)
    assert tokens == single_run[1]
    sharded = tmp_path / "ckpt" / f"epoch=0-step={RESUME_AT}.ckpt"
    assert sharded.is_dir() and sorted(p.name for p in sharded.glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    # Written atomically: completion marker inside, no staging folder left beside it.
    assert (sharded / "ouro_checkpoint_complete.json").is_file()
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
    # The next stage (init_from) and `ouro export` read a sharded checkpoint folder as one full model.
    from ouro.checkpoints import read_source

    loaded = read_source(sharded)
    reference = OuroForCausalLM(loaded.config).state_dict()
    assert sorted(loaded.state_dict) == sorted(reference)
    assert all(loaded.state_dict[k].shape == v.shape for k, v in reference.items())
    assert loaded.tokens_seen == single_run[1][RESUME_AT - 1]
    firsts = [json.loads((tmp_path / "fsdp" / f"rank{r}.json").read_text())[0] for r in range(2)]
    assert (
        firsts[0]["fsdp_units"] == OuroConfig.preset("tiny").num_hidden_layers + 1
    )  # each DecoderLayer + root
    decayed = sum(first["decayed_numel"] for first in firsts)
    assert decayed == single_run[3]  # weight decay picks the same parameters when FSDP flattens them


LAYERS, PASSES = 2, 3
MODES = ("fsdp1:SHARD_GRAD_OP", "fsdp1:FULL_SHARD", "fsdp2:keep", "fsdp2:reshard")


def _loss(model: torch.nn.Module, net: OuroForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-step LM loss through the LM head, weighted by step, plus a gate term (every parameter gets a grad)."""
    out = model(input_ids[:, :-1])
    targets = input_ids[:, 1:].reshape(-1)
    total = out.gate_logits.float().sin().mean()
    for t, hidden in enumerate(out.hidden_states):
        logits = torch.nn.functional.linear(hidden, net.lm_head.weight).reshape(targets.numel(), -1)
        total = total + (t + 1) * torch.nn.functional.cross_entropy(logits.float(), targets)
    return total


class _WithLoss(torch.nn.Module):
    """Like Lightning's FSDP1 wrapper: the loss (LM head included) is computed inside the root's forward."""

    def __init__(self, net: OuroForCausalLM) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _loss(self.net, self.net, input_ids)


def _fsdp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    config = OuroConfig.preset("tiny", num_hidden_layers=LAYERS, total_ut_steps=PASSES)
    data = torch.randint(0, config.vocab_size, (2 * world, 17), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    reference = OuroForCausalLM(config)
    _loss(
        reference, reference, data
    ).backward()  # the mean over the whole batch = the mean of the ranks' means
    results = {}
    for mode in [f"{m}:{c}" for m in MODES for c in ("plain", "checkpointed")]:
        kind, option, recompute = mode.split(":")
        torch.manual_seed(0)
        net = OuroForCausalLM(config)
        net.set_activation_checkpointing(recompute == "checkpointed")
        if kind == "fsdp1":
            model = FSDP(
                _WithLoss(net),
                auto_wrap_policy=ModuleWrapPolicy(wrap_policy()),
                sharding_strategy=ShardingStrategy[option],
                device_id=torch.device("cpu"),
                use_orig_params=True,
            )
            step = model
        else:  # FSDP2 hooks the network's forward; the LM head is read after it, as in OuroLM.training_step
            apply_fsdp2(net, reshard_after_forward=option == "reshard")
            step = functools.partial(_loss, net, net)
        mine = data[rank * 2 : (rank + 1) * 2]
        counts_per_step = []
        for _ in range(2):  # the second step shows the steady state (no lazy-init gathers)
            for p in net.parameters():
                p.grad = None
            with count_collectives() as counts:
                step(mine).backward()
            counts_per_step.append(all_gathers(counts))
        if kind == "fsdp1":
            with FSDP.summon_full_params(model, with_grads=True):
                grads = {
                    n.replace("_fsdp_wrapped_module.", ""): p.grad.clone() for n, p in net.named_parameters()
                }
        else:
            grads = {n: p.grad.full_tensor() for n, p in net.named_parameters()}
        error = max(
            float((grads[n] - p.grad).abs().max() / p.grad.abs().max())
            for n, p in reference.named_parameters()
        )
        results[mode] = dict(all_gathers=counts_per_step, grad_error=error)
        dist.barrier()
    Path(out_dir, f"fsdp{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_gradients_and_all_gathers_per_step(tmp_path: Path) -> None:
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    results = json.loads((tmp_path / "fsdp0.json").read_text())
    for mode, result in results.items():
        assert result["grad_error"] < 1e-5, (mode, result)
        assert result["all_gathers"][0] == result["all_gathers"][1], (mode, result)
    n, T = LAYERS, PASSES
    gathers = {mode.removesuffix(":plain"): result["all_gathers"][1] for mode, result in results.items()}
    for mode in MODES:  # recomputing a layer call in backward happens while its parameters are gathered
        assert gathers[f"{mode}:checkpointed"] == gathers[mode], gathers
    # Kept gathered from the first pass to the end of backward: each unit (layers + root) once per step.
    assert gathers["fsdp1:SHARD_GRAD_OP"] == n + 1
    # FULL_SHARD re-gathers every layer on every pass in forward; FSDP1 re-gathers once per layer in backward.
    assert gathers["fsdp1:FULL_SHARD"] == 1 + n * T + n
    # FSDP2 without resharding: once per layer in forward, again for each further pass's backward.
    assert gathers["fsdp2:keep"] == 1 + n * T
    # FSDP2 resharding after every layer call: every call in forward and in backward (the root stays gathered).
    assert gathers["fsdp2:reshard"] == 1 + 2 * n * T


def test_fsdp_strategy_defaults_and_precision() -> None:
    from torch.distributed.fsdp import ShardingStrategy

    from ouro.model.looped import DecoderLayer

    strategy = OuroFSDPStrategy(
        auto_wrap_policy=None, precision_plugin=None
    )  # None: as LightningCLI passes it
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    policy = strategy.kwargs["auto_wrap_policy"]  # Lightning turns the set into a ModuleWrapPolicy
    layer = DecoderLayer(OuroConfig.preset("tiny"), 0)
    assert policy(layer, recurse=False, nonwrapped_numel=1) and not policy(
        layer.mlp, recurse=False, nonwrapped_numel=1
    )
    assert strategy._state_dict_type == "sharded"
    from lightning.pytorch.plugins.precision import FSDPPrecision

    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    config = strategy.mixed_precision_config
    assert (config.param_dtype, config.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (
        OuroFSDPStrategy(
            fp32_reduce=False, precision_plugin=FSDPPrecision("bf16-mixed")
        ).mixed_precision_config.reduce_dtype
        == torch.bfloat16
    )


def test_strategy_short_names_and_plain_class_paths() -> None:
    from torch.distributed.fsdp import ShardingStrategy

    assert isinstance(resolve_strategy("fsdp2"), OuroFSDP2Strategy)
    assert resolve_strategy("fsdp").sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert resolve_strategy("fsdp_full_shard").sharding_strategy == ShardingStrategy.FULL_SHARD
    assert isinstance(resolve_strategy("ouro.distributed.OuroFSDP2Strategy"), OuroFSDP2Strategy)
    assert resolve_strategy("ddp") == "ddp" and resolve_strategy("auto") == "auto"
    for wrong in ("ouro.distributed.Nothing", "ouro.config.OuroConfig"):
        with pytest.raises(ValueError, match="is neither a strategy name"):
            resolve_strategy(wrong)


def test_apply_fsdp2_needs_decoder_layers() -> None:
    with pytest.raises(ValueError, match="no DecoderLayer"):
        apply_fsdp2(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_step_runs_a_flash_kernel_on_gpu() -> None:
    """On GPU in bf16 the attention of a training step is a flash kernel (flash-attn's, or SDPA's flash)."""
    from torch.profiler import ProfilerActivity, profile

    from ouro.module import OuroLM

    module = OuroLM(
        model=OuroConfig.preset("tiny", hidden_size=256, num_attention_heads=4), activation_checkpointing=True
    ).cuda()
    tokens = torch.randint(0, 512, (2, 129), device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.compute_loss({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]})[0].loss
        loss.backward()
        torch.cuda.synchronize()
    kernels = [event.key for event in prof.key_averages()]
    assert any("flash" in name.lower() for name in kernels), kernels


if __name__ == "__main__":
    # What torchrun runs: the `ouro` command, then a process-group teardown. Without it a gloo process sometimes
    # aborts at interpreter exit ("terminate called without an active exception") after training has finished.
    from ouro.cli import main

    main(sys.argv[1:])
    if dist.is_initialized():
        dist.destroy_process_group()
