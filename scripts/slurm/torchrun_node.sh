#!/bin/bash
# `ouro fit` on a cluster without SLURM: run this script once on every node (same arguments on each).
#
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0 host> GPUS=8 scripts/slurm/torchrun_node.sh recipes/stable.yaml
#
# torchrun starts one process per GPU and sets RANK / LOCAL_RANK / WORLD_SIZE, which Lightning reads (its
# TorchElastic environment); the Trainer's num_nodes x devices must match torchrun's nnodes x nproc_per_node.
# On a single node: torchrun --standalone --nproc_per_node 8 --no-python ouro fit --config RECIPE --trainer.devices 8
set -euo pipefail
RECIPE=${1:?usage: torchrun_node.sh RECIPE.yaml [ouro fit flags]}
shift
NNODES=${NNODES:-1}
GPUS=${GPUS:-8}
torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --no-python ouro fit --config "$RECIPE" --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" "$@"
