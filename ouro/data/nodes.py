"""Which part of a prepare this machine does: node rank and count from the arguments or the environment.

Order of precedence: the ``--num_nodes`` / ``--node_rank`` arguments; ``OURO_NUM_NODES`` / ``OURO_NODE_RANK``;
a SLURM job array (``SLURM_ARRAY_TASK_COUNT``, and ``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN``);
litdata's own ``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``; otherwise one node.
"""

from __future__ import annotations

import os

from ouro.data.errors import DataError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"environment variable {name}={value!r} is not an integer") from None


def node_split(num_nodes: int | None = None, node_rank: int | None = None) -> tuple[int, int]:
    """``(num_nodes, node_rank)`` of this process."""
    if num_nodes is None and node_rank is None:
        if _env_int("OURO_NUM_NODES") is not None:
            num_nodes, node_rank = _env_int("OURO_NUM_NODES"), _env_int("OURO_NODE_RANK")
        elif _env_int("SLURM_ARRAY_TASK_COUNT") is not None:
            num_nodes = _env_int("SLURM_ARRAY_TASK_COUNT")
            node_rank = (_env_int("SLURM_ARRAY_TASK_ID") or 0) - (_env_int("SLURM_ARRAY_TASK_MIN") or 0)
        elif _env_int("DATA_OPTIMIZER_NUM_NODES") is not None:
            num_nodes, node_rank = _env_int("DATA_OPTIMIZER_NUM_NODES"), _env_int("DATA_OPTIMIZER_NODE_RANK")
    num_nodes = 1 if num_nodes is None else num_nodes
    node_rank = 0 if node_rank is None else node_rank
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise DataError(
            f"node_rank {node_rank} of num_nodes {num_nodes} is invalid: need num_nodes >= 1 and "
            "0 <= node_rank < num_nodes"
        )
    return num_nodes, node_rank
