#!/usr/bin/env bash
# Several nodes from a hostfile ("<hostname> slots=<GPUs>" per line), through the deepspeed
# launcher (pdsh over passwordless ssh from the first node):
#   launch/multi_node.sh launch/hostfile pretrain --config launch/configs/pretrain_large.toml
# Without ssh (SLURM and friends): run once per node with NODE_RANK and MASTER_ADDR set:
#   NODE_RANK=$SLURM_NODEID MASTER_ADDR=node0 launch/multi_node.sh launch/hostfile pretrain ...
set -euo pipefail
hostfile=${1:?usage: $0 HOSTFILE pretrain|finetune ARGS...}; shift
port=${MASTER_PORT:-29500}
if [[ -n "${NODE_RANK:-}" ]]; then
  exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR to the first node}" --master_port "$port" \
    --module ofa_ds.train "$@"
fi
exec deepspeed --hostfile "$hostfile" --master_port "$port" --module ofa_ds.train "$@"
