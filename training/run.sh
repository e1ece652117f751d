#!/usr/bin/env bash
# Fine-tune SAM-Lung with DDP on one machine: one process per GPU (2 by default), like the
# research code's run.sh. Extra arguments go to samlung-finetune, for example:
#
#   bash training/run.sh --data-path data --sam-weights checkpoint/sam_vit_b_01ec64.pth \
#       --output-dir runs/exp1 --epochs 100 --batch-size 4 --amp --sync_bn
#
# Environment: NPROC (processes per node, default 2), NNODES / NODE_RANK / MASTER_ADDR /
# MASTER_PORT for several machines (each machine runs this script with its NODE_RANK).
set -euo pipefail

NPROC="${NPROC:-2}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
PYTHON="${PYTHON:-python}"

exec "$PYTHON" -m torch.distributed.run \
    --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m training.finetune "$@"
