"""Which part of a prepare this machine does: node count and rank, given or read from the environment.

The split is explicit: ``--num_nodes N --node_rank R``, or ``--num_nodes env``, which reads, in this order,
``OURO_NUM_NODES`` / ``OURO_NODE_RANK``; a SLURM job array (``SLURM_ARRAY_TASK_COUNT``, and ``SLURM_ARRAY_TASK_ID``
minus ``SLURM_ARRAY_TASK_MIN``); litdata's ``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``. Never
implicit: a training job that happens to run in a SLURM array must not split the prepare of its built-in data.
"""

from __future__ import annotations

import os

from ouro.errors import DataError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"environment variable {name}={value!r} is not an integer") from None


def node_split(num_nodes: int | str = 1, node_rank: int = 0) -> tuple[int, int]:
    """``(num_nodes, node_rank)`` of this process; ``num_nodes="env"`` reads them from the environment."""
    if num_nodes == "env":
        if _env_int("OURO_NUM_NODES") is not None:
            num_nodes, node_rank = _env_int("OURO_NUM_NODES"), _env_int("OURO_NODE_RANK") or 0
        elif _env_int("SLURM_ARRAY_TASK_COUNT") is not None:
            num_nodes = _env_int("SLURM_ARRAY_TASK_COUNT")
            node_rank = (_env_int("SLURM_ARRAY_TASK_ID") or 0) - (_env_int("SLURM_ARRAY_TASK_MIN") or 0)
        elif _env_int("DATA_OPTIMIZER_NUM_NODES") is not None:
            num_nodes = _env_int("DATA_OPTIMIZER_NUM_NODES")
            node_rank = _env_int("DATA_OPTIMIZER_NODE_RANK") or 0
        else:
            raise DataError(
                "--num_nodes env, but none of OURO_NUM_NODES, SLURM_ARRAY_TASK_COUNT or DATA_OPTIMIZER_NUM_NODES "
                "is set; give --num_nodes N --node_rank R instead"
            )
    if not isinstance(num_nodes, int) or num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise DataError(
            f"node_rank {node_rank} of num_nodes {num_nodes} is invalid: need num_nodes >= 1 (or 'env') and "
            "0 <= node_rank < num_nodes"
        )
    return num_nodes, node_rank
