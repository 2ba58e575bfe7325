"""One training step of a recipe, counted: the memory of every phase and the FLOPs of every pass.

`count_step` runs what a fit runs for one optimizer step (the strategy's wrapping, the forward of all T passes
and the chunked loss under the Trainer's precision, backward, gradient clipping, the AdamW step) under a
`LiveStorageCounter`. It runs on real tensors (a measured CPU step) or, inside `fake_world`, on fake tensors at
any size (a plan).

The first step of a fit creates the optimizer state inside its optimizer step; every later step starts with it.
So the steady-state peak is the larger of the forward/backward peak plus the optimizer state (plus the gradients
of the previous micro-batches when gradients accumulate) and the peak of the optimizer step itself.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed.fsdp import _flat_param
from torch.nn.parallel import DistributedDataParallel
from torch.nn.parallel import distributed as ddp_module
from torch.testing._internal.distributed.fake_pg import FakeStore

from ouro import cross_entropy
from ouro.errors import PlanError
from ouro.module import OuroLM
from ouro.plan.flash import gpu_attention
from ouro.plan.flops import PhaseFlops
from ouro.plan.live_memory import LiveStorages
from ouro.plan.recorder import FakeStepRecorder, StepRecorder
from ouro.plan.spec import PlanSpec
from ouro.plan.wrapping import wrap

#: Plans and measured steps run on the CPU (a plan's tensors are fake: they hold no memory anywhere).
CPU = torch.device("cpu")


@dataclass
class StepCount:
    """Bytes and FLOPs of one training step on one rank."""

    params_bytes: int
    """Parameters this rank holds between steps (its shard under FSDP)."""
    grads_bytes: int
    """Gradients this rank holds after backward (its shard under FSDP)."""
    optimizer_bytes: int
    """AdamW state this rank holds (its shard under FSDP)."""
    forward_backward_peak: int
    """Peak during forward and backward of the first step (no optimizer state yet)."""
    optimizer_peak: int
    """Peak during gradient clipping and the optimizer step."""
    peak_bytes: int
    """Steady-state peak of a step (see the module's docstring)."""
    model_flops: float
    """FLOPs of forward (all passes), loss and backward on this rank, without recomputation."""
    hardware_flops: float
    """``model_flops`` plus activation checkpointing's recomputation."""
    tokens: int
    """Tokens of the micro-batch on this rank."""
    parameters: int
    """Parameters of the model (all ranks together)."""


@contextmanager
def _fsdp1_on_fake_tensors() -> Iterator[None]:
    """FSDP1 asks whether a flat parameter is allocated, or shares a storage, through data pointers; fake
    storages have none, so ask their size and identity instead (real tensors are answered as before)."""
    allocated, same = _flat_param._data_ptr_allocated, _flat_param._same_storage

    def fake_allocated(tensor: torch.Tensor) -> bool:
        if isinstance(tensor, FakeTensor):
            return tensor.untyped_storage().nbytes() > 0
        return allocated(tensor)

    def fake_same(a: torch.Tensor, b: torch.Tensor) -> bool:
        local_a, local_b = getattr(a, "_local_tensor", a), getattr(b, "_local_tensor", b)
        if isinstance(local_a, FakeTensor) or isinstance(local_b, FakeTensor):
            return local_a.untyped_storage()._cdata == local_b.untyped_storage()._cdata
        return same(a, b)

    _flat_param._data_ptr_allocated, _flat_param._same_storage = fake_allocated, fake_same
    try:
        yield
    finally:
        _flat_param._data_ptr_allocated, _flat_param._same_storage = allocated, same


@contextmanager
def _ddp_on_fake_tensors() -> Iterator[None]:
    """DDP's constructor compares parameter shapes across ranks and broadcasts rank 0's values through the C++
    process group, which needs real data; a fake world has one rank and no values to agree on."""
    with (
        mock.patch.object(ddp_module, "_verify_param_shape_across_processes", lambda *args: None),
        mock.patch.object(ddp_module, "_sync_module_states", lambda *args, **kwargs: None),
    ):
        yield


@contextmanager
def fake_world(world_size: int) -> Iterator[None]:
    """One process plays rank 0 of ``world_size``: a fake process group (collectives do nothing), FSDP1 taught to
    handle fake tensors, FlashAttention's kernels and the loss's blocks as on the GPU. `count_step` with
    ``fake=True`` then runs on fake tensors (shapes only, no memory)."""
    if dist.is_initialized():
        raise PlanError("a plan needs its own fake process group; plan before the run's process group starts")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        with (
            warnings.catch_warnings(),
            _fsdp1_on_fake_tensors(),
            _ddp_on_fake_tensors(),
            gpu_attention(),
            # The GPU's loss blocks (the model's loss_chunk_size), not the smaller blocks chosen on CPU.
            mock.patch.object(cross_entropy, "CPU_MAX_CHUNK", sys.maxsize),
        ):
            # FSDP1's catch-all reshard reads a data pointer; on a fake tensor it is 0, which FSDP handles.
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            yield
    finally:
        dist.destroy_process_group()


def _fake_allreduce(state, bucket):  # noqa: ANN001, ANN202 (annotated below: DDP checks the real classes)
    """DDP's gradient all-reduce in a fake world: the bucket as it is (a fake group's work has no result)."""
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


_fake_allreduce.__annotations__ = {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}


def _unique_bytes(tensors: Any) -> int:
    storages = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            tensor = getattr(tensor, "_local_tensor", tensor)
            storage = tensor.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
    return sum(storages.values())


def _batch(micro_batch: int, seq_len: int, vocab: int) -> dict[str, torch.Tensor]:
    tokens = torch.randint(0, vocab, (micro_batch, seq_len + 1))
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


def build_module(spec: PlanSpec) -> OuroLM:
    """The recipe's `OuroLM`, with random weights (``init_from`` is not read: a plan needs no checkpoint)."""
    return OuroLM(**spec.module)


def count_step(
    spec: PlanSpec,
    fake: bool = False,
) -> StepCount:
    """Build, wrap and run one training step of ``spec`` on this rank, counting its memory and FLOPs; on fake
    tensors (inside `fake_world`) with ``fake``."""
    counter, flops = LiveStorages(), PhaseFlops()
    recorder = FakeStepRecorder(counter, flops) if fake else StepRecorder(counter, flops)
    with recorder, counter.resizes_counted():
        module = build_module(spec)
        parameters = module.net.num_parameters()
        module.train()
        step = wrap(module, spec.strategy, spec.precision, CPU)
        if fake and isinstance(step.wrapper, DistributedDataParallel):
            step.wrapper.register_comm_hook(None, _fake_allreduce)
        optimizer = module.configure_optimizers()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        params_bytes = _unique_bytes(step.wrapper.parameters())
        batch = _batch(spec.micro_batch, spec.seq_len, module.config.vocab_size)
        counter.reset_peak()
        with flops.watching_layers(module):
            with step.forward_context(), flops.counting("loss"):
                loss = step.loss(batch)
            with flops.counting("backward"):
                loss.backward()
        del loss
        forward_backward_peak = counter.peak
        grads_bytes = _unique_bytes(p.grad for p in params)
        counter.reset_peak()
        if spec.gradient_clip_val:
            step.clip_gradients(spec.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        optimizer_peak = counter.peak
        optimizer_bytes = _unique_bytes(v for state in optimizer.state.values() for v in state.values())
    carried = optimizer_bytes + (grads_bytes if spec.accumulate_grad_batches > 1 else 0)
    return StepCount(
        params_bytes=params_bytes,
        grads_bytes=grads_bytes,
        optimizer_bytes=optimizer_bytes,
        forward_backward_peak=forward_backward_peak,
        optimizer_peak=optimizer_peak,
        peak_bytes=max(forward_backward_peak + carried, optimizer_peak),
        model_flops=flops.model,
        hardware_flops=flops.hardware,
        tokens=spec.micro_batch * spec.seq_len,
        parameters=parameters,
    )
