"""Scale-out helpers: Lightning strategies configured for the looped stack, and a collective counter.

The stack's decoder layers run ``total_ut_steps`` (T) times per step with the same weights. Sharded data
parallelism normally gathers a layer's parameters before each call and frees them after it, so a looped layer
would be gathered T times in forward and again T times in backward. The strategies here keep a layer's
parameters gathered from its first call to the end of backward instead (measured in docs/scale-out.md):

* `OuroFSDPStrategy`: Lightning's FSDP (FSDP1) with one unit per `DecoderLayer`, ``SHARD_GRAD_OP`` by default
  (parameters stay gathered between forward and backward; gradients and optimiser state sharded), sharded
  checkpoints, bf16 parameters with fp32 gradient reduction under ``precision: bf16-mixed``. Also runs on CPU
  with gloo (for tests).
* `OuroFSDP2Strategy`: Lightning's ``ModelParallelStrategy`` plus FSDP2 ``fully_shard`` per `DecoderLayer` with
  ``reshard_after_forward=False`` (the same trade-off, DTensor parameters, distributed checkpoints).

Both write sharded checkpoint folders atomically (`ouro.checkpoint_io.AtomicShardedSave`: a staging folder, a
completion marker written last, then a rename).

DDP needs nothing of ours: ``trainer.strategy: ddp``. On the command line the strategies have short names
(`STRATEGY_NAMES`: ``--trainer.strategy fsdp2``; under ``ouro fit``, ``fsdp`` is ours, not Lightning's plain
FSDP), and a class path
given as a plain string (``--trainer.strategy ouro.distributed.OuroFSDP2Strategy``) builds the class with its
defaults (`resolve_strategy`). Recipes name these classes by ``class_path``::

    trainer:
      precision: bf16-mixed
      strategy:
        class_path: ouro.distributed.OuroFSDPStrategy
        init_args: {sharding_strategy: SHARD_GRAD_OP}
"""

from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecision, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from ouro.checkpoint_io import AtomicShardedSave
from ouro.model.looped import DecoderLayer

#: Collectives that FSDP1 / FSDP2 / DDP call through ``torch.distributed`` (gloo uses the list-based ones).
COLLECTIVES = (
    "all_gather",
    "all_gather_single",
    "all_gather_into_tensor",
    "reduce_scatter_single",
    "reduce_scatter_tensor",
    "all_reduce",
)


def wrap_policy() -> set[type[nn.Module]]:
    """Module classes that become their own FSDP unit: every decoder layer (embedding, norm, gate and LM head
    stay in the root unit, gathered once per step)."""
    return {DecoderLayer}


class OuroFSDPStrategy(AtomicShardedSave, FSDPStrategy):
    """Lightning ``FSDPStrategy`` (FSDP1) set up for the looped stack.

    Every other ``FSDPStrategy`` argument (``cpu_offload``, ``mixed_precision``, ``activation_checkpointing_policy``
    ...) passes through. Prefer the model's own ``activation_checkpointing: true`` (it checkpoints each of the
    T x layers calls) over Lightning's policy, which wraps the layer module.
    """

    def __init__(
        self,
        sharding_strategy: Literal[
            "SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2", "NO_SHARD"
        ] = "SHARD_GRAD_OP",
        state_dict_type: Literal["sharded", "full"] = "sharded",
        fp32_reduce: bool = True,
        limit_all_gathers: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            sharding_strategy: ``SHARD_GRAD_OP`` keeps each layer gathered from its first pass to the end of
                backward (1 all-gather per layer per step; parameter memory of one full copy); ``FULL_SHARD``
                frees after every layer call and re-gathers (T + 1 all-gathers per layer per step, least memory).
                ``HYBRID_SHARD``: ``FULL_SHARD`` inside a node, replicated across nodes.
            state_dict_type: ``sharded``: each rank writes its shard (a checkpoint folder; needed at 1B+ scale);
                ``full``: one file assembled on rank 0.
            fp32_reduce: Reduce gradients in fp32 when the Trainer's precision is bf16/fp16 (Lightning's default
                reduces in the low precision).
            limit_all_gathers: Rate-limit prefetching all-gathers (bounds memory with many layers).
            **kwargs: Further ``FSDPStrategy`` / ``FullyShardedDataParallel`` arguments.
        """
        if (
            kwargs.get("auto_wrap_policy") is None
        ):  # LightningCLI passes the parent's default (None) explicitly
            kwargs["auto_wrap_policy"] = wrap_policy()
        super().__init__(
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            limit_all_gathers=limit_all_gathers,
            **kwargs,
        )
        self.fp32_reduce = fp32_reduce

    @property
    def mixed_precision_config(self) -> MixedPrecision | None:
        config = super().mixed_precision_config
        if config is not None and self.fp32_reduce and config.reduce_dtype in (torch.bfloat16, torch.float16):
            config = MixedPrecision(
                param_dtype=config.param_dtype, reduce_dtype=torch.float32, buffer_dtype=torch.float32
            )
        return config

    def _setup_model(self, model: nn.Module) -> nn.Module:
        # Lightning passes device_id=None on CPU, which torch's FSDP1 refuses; it works with an explicit CPU device.
        if self.root_device.type == "cpu":
            if not any(isinstance(m, FSDP) for m in model.modules()):
                kwargs = dict(self.kwargs)
                model = FSDP(
                    module=model,
                    cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy,
                    device_id=torch.device("cpu"),
                    **kwargs,
                )
                self.kwargs.pop("auto_wrap_policy", None)
                try:
                    return super()._setup_model(model)
                finally:
                    self.kwargs = kwargs
        return super()._setup_model(model)


class OuroFSDP2Strategy(AtomicShardedSave, ModelParallelStrategy):
    """Lightning ``ModelParallelStrategy`` with FSDP2 applied to the looped model (no tensor parallelism).

    Each `DecoderLayer`, then the module's network ``net``, gets ``fully_shard`` over the data-parallel mesh.
    ``reshard_after_forward=False`` keeps a layer's parameters gathered across the T passes and until its
    backward; ``True`` gathers on every layer call (2 x T per layer per step) for the least memory.
    """

    def __init__(
        self,
        reshard_after_forward: bool = False,
        param_dtype: Literal["bfloat16", "float32"] | None = "bfloat16",
        reduce_dtype: Literal["bfloat16", "float32"] = "float32",
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            reshard_after_forward: Free each layer's gathered parameters after every call (least memory, T times
                the all-gathers) instead of keeping them until backward.
            param_dtype: Dtype of the gathered parameters used in compute (``None``: the stored dtype).
            reduce_dtype: Dtype of the gradient reduce-scatter.
            save_distributed_checkpoint: Each rank writes its shard (a checkpoint folder) instead of one file.
            **kwargs: Further ``ModelParallelStrategy`` arguments (``timeout``). Data parallelism spans every
                process; tensor parallelism is not supported (``tensor_parallel_size`` must be 1 or "auto").
        """
        # jsonargparse passes the parent's defaults through **kwargs ("auto" for both sizes); "auto" would make
        # the data-parallel mesh one node wide and leave the GPUs of a node unsharded *and unsynchronised*.
        tensor_parallel = kwargs.pop("tensor_parallel_size", 1)
        data_parallel = kwargs.pop("data_parallel_size", "auto")
        if tensor_parallel not in (1, "auto") or data_parallel != "auto":
            raise ValueError(
                "OuroFSDP2Strategy shards over all processes: leave data_parallel_size and "
                "tensor_parallel_size unset (tensor parallelism is not supported)"
            )
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = getattr(torch, param_dtype) if param_dtype else None
        self.reduce_dtype = getattr(torch, reduce_dtype)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process, not every node
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        # The Trainer has run the module's configure_model (e.g. per-layer compile) before this point.
        apply_fsdp2(
            self.lightning_module.net,
            self.device_mesh["data_parallel"],
            self.reshard_after_forward,
            self.param_dtype,
            self.reduce_dtype,
        )
        super().setup(trainer)


def apply_fsdp2(
    module: nn.Module,
    mesh: Any = None,
    reshard_after_forward: bool = False,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """``fully_shard`` every `DecoderLayer` in ``module``, then ``module`` itself (its root unit holds the
    embedding, final norm, exit gate and LM head). Returns ``module``, sharded in place.

    ``module`` is the network (`OuroForCausalLM`): its forward is what FSDP2 hooks. The root unit never reshards
    after forward, because the objective reads ``lm_head.weight`` after the network's forward has returned.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    layers = [m for m in module.modules() if isinstance(m, DecoderLayer)]
    if not layers:
        raise ValueError(
            f"{type(module).__name__} has no DecoderLayer to shard; pass the OuroLM or the network"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    return module


#: Short ``trainer.strategy`` names of the strategies above (`resolve_strategy`): name -> (class, its arguments,
#: description).
STRATEGY_NAMES: dict[str, tuple[type[Strategy], dict[str, Any], str]] = {
    "fsdp": (
        OuroFSDPStrategy,
        {},
        "ouro's FSDP1: one unit per decoder layer, SHARD_GRAD_OP, sharded checkpoints",
    ),
    "fsdp1": (OuroFSDPStrategy, {}, "the same as fsdp"),
    "fsdp_full_shard": (
        OuroFSDPStrategy,
        {"sharding_strategy": "FULL_SHARD"},
        "ouro's FSDP1 freeing parameters after every layer call (least memory)",
    ),
    "fsdp2": (
        OuroFSDP2Strategy,
        {},
        "ouro's FSDP2: fully_shard per decoder layer, kept gathered across passes",
    ),
}


def resolve_strategy(strategy: Any) -> Any:
    """``trainer.strategy`` as Lightning takes it. A name of `STRATEGY_NAMES` becomes an instance (Lightning's
    registry would refuse ``fsdp`` on CPU by name); a plain string with a dot is a class path (Lightning would
    take it for a registered name and fail): it becomes an instance of that class with default arguments.
    Anything else passes through (Lightning's names such as ``ddp`` and ``auto``, instances)."""
    if isinstance(strategy, str) and strategy in STRATEGY_NAMES:
        cls, init_args, _ = STRATEGY_NAMES[strategy]
        return cls(**init_args)
    if not isinstance(strategy, str) or "." not in strategy:
        return strategy
    module_name, _, class_name = strategy.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        names = ", ".join(sorted({*STRATEGY_NAMES, "auto", "ddp"}))
        raise ValueError(
            f"trainer.strategy {strategy!r} is neither a strategy name ({names}, ...) nor the class path of "
            "a lightning Strategy; give a name, or a class path such as ouro.distributed.OuroFSDP2Strategy"
        )
    return cls()


def full_network_state(trainer: Any, pl_module: Any) -> dict[str, torch.Tensor]:
    """The network's (``pl_module.net``) full weights on CPU, official key names. Under FSDP1 / FSDP2 the
    shards are gathered: a collective every rank must call; only rank 0 receives the tensors (the others get an
    empty dict). Without sharding every rank gets them."""
    model = trainer.strategy.model
    if isinstance(model, FSDP):
        # FSDP1: its full-state-dict hooks crash on CPU (gloo) after an evaluation forward; gathering the
        # parameters and copying them is the same on any device.
        with FSDP.summon_full_params(model, writeback=False):
            state = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        return state if trainer.is_global_zero else {}
    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return {k: v.detach().cpu() for k, v in pl_module.net.state_dict().items()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


@contextlib.contextmanager
def count_collectives() -> Iterator[Counter]:
    """Count calls of ``torch.distributed`` collectives (by name) made while the context is open.

    FSDP and DDP look the functions up on the ``torch.distributed`` module at call time, so replacing them there
    sees every call. Used by tests and docs/scale-out.md to count all-gathers per training step.
    """
    counts: Counter = Counter()
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def counted(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return function(*args, **kwargs)

        return call

    for name, function in originals.items():
        setattr(dist, name, counted(name, function))
    try:
        yield counts
    finally:
        for name, function in originals.items():
            setattr(dist, name, function)


def all_gathers(counts: Counter) -> int:
    """Total parameter all-gathers in ``counts`` (whichever variant the backend used)."""
    return sum(counts[name] for name in ("all_gather", "all_gather_single", "all_gather_into_tensor"))


__all__ = [
    "OuroFSDPStrategy",
    "OuroFSDP2Strategy",
    "STRATEGY_NAMES",
    "all_gathers",
    "apply_fsdp2",
    "count_collectives",
    "full_network_state",
    "resolve_strategy",
    "wrap_policy",
]
