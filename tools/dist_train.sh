#!/usr/bin/env bash
# Distributed training: tools/dist_train.sh CONFIG GPUS [tools/train.py arguments]
#
# Starts GPUS processes on this node with torchrun (`python -m torch.distributed.run`) and
# `--launcher pytorch`. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT as for mmdet's
# script. PYTHON picks the interpreter (default: python).
# Without CUDA, GPUS is the number of CPU processes: TimmBackboneRunner then uses the gloo
# backend and CPU DistributedDataParallel (mmengine's own Runner needs CUDA for this), e.g.
#   tools/dist_train.sh configs/x.py 2 --work-dir work_dirs/x
# Configs with runner_type='mmdet.TimmBackboneFlexibleRunner' and a strategy (FSDP, e.g.
# configs/mask-rcnn_timm-vit-large-p16-mae_fpn_fsdp-layer-decay-1x_coco.py) run the same way.
# torchrun sets OMP_NUM_THREADS=1 per process unless it is set.
set -euo pipefail

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
