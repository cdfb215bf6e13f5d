#!/usr/bin/env bash
# Several nodes from a hostfile ("<hostname> slots=<processes>" per line), through the deepspeed
# launcher. Three ways to start it:
#
# 1. pdsh over ssh (the default): run once, on the first node. Every node must reach every other
#    one by passwordless ssh, and pdsh must be installed; DeepSpeed starts the other nodes.
#      launch/multi_node.sh launch/hostfile pretrain --config launch/configs/huge_4node.toml
# 2. No ssh: run once per node, with that node's NODE_RANK (0 = the hostfile's first line) and
#    MASTER_ADDR (the first node's address, reachable from all nodes); every node uses the same
#    hostfile. This is DeepSpeed's --no_ssh mode.
#      NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/multi_node.sh launch/hostfile pretrain ...
# 3. SLURM: the same as 2, one task per node (srun --ntasks-per-node=1), e.g.
#      srun --ntasks-per-node=1 bash -c 'NODE_RANK=$SLURM_NODEID \
#        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1) \
#        launch/multi_node.sh launch/hostfile pretrain --config ...'
#
# A hostfile that names only this machine (e.g. "localhost slots=2") needs neither ssh nor
# NODE_RANK: it is started locally (DeepSpeed would otherwise check ssh to localhost).
# MASTER_PORT (default 29500) sets the rendezvous port.
set -euo pipefail
hostfile=${1:?usage: $0 HOSTFILE pretrain|finetune ARGS...}; shift
[[ -f "$hostfile" ]] || { echo "$0: hostfile $hostfile not found" >&2; exit 2; }
port=${MASTER_PORT:-29500}

only_this_machine() {
  local host _ found=0
  while read -r host _ || [[ -n "${host:-}" ]]; do  # also a last line without a newline
    [[ -z "$host" || "$host" == \#* ]] && continue
    case "$host" in
      localhost|127.0.0.1|"$(hostname)"|"$(hostname -f 2>/dev/null || hostname)") found=1 ;;
      *) return 1 ;;
    esac
  done < "$hostfile"
  [[ $found == 1 ]]
}

if [[ -n "${NODE_RANK:-}" ]]; then
  exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR to the first node}" --master_port "$port" \
    --module ofa_ds.train "$@"
fi
if only_this_machine; then
  exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank 0 --master_addr 127.0.0.1 \
    --master_port "$port" --module ofa_ds.train "$@"
fi
exec deepspeed --hostfile "$hostfile" --master_port "$port" --module ofa_ds.train "$@"
