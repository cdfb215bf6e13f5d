#!/usr/bin/env bash
# One node, N processes (GPUs; on a CPU-only machine, processes over gloo).
#   launch/single_node.sh NPROC pretrain --config launch/configs/pretrain_base.toml [section.field=value ...]
#   launch/single_node.sh 2 pretrain --config launch/configs/pretrain_demo_cpu.toml    # CPU, 2 processes
set -euo pipefail
nproc_per_node=${1:?usage: $0 NPROC pretrain|finetune ARGS...}; shift
port=${MASTER_PORT:-29500}
# No launcher logic here: all settings live in the config; DeepSpeed only spawns processes.
exec deepspeed --num_gpus "$nproc_per_node" --master_port "$port" --module ofa_ds.train "$@"
