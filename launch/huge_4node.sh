#!/usr/bin/env bash
# OFA-Huge pretraining on 4 nodes x 8 GPUs (80 GB each): DP=32, ZeRO-1, bf16.
#   HOSTFILE=my_hosts launch/huge_4node.sh data.root=/data/ofa [section.field=value ...]
# HOSTFILE: "<hostname> slots=8" per node (see launch/huge_4node.hostfile); default
# launch/huge_4node.hostfile. Without passwordless ssh (SLURM), run on every node with
# NODE_RANK and MASTER_ADDR set (launch/multi_node.sh's --no_ssh path).
# Recipe: launch/configs/huge_4node.toml; reasons: ofa_ds/parallel/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hostfile=${HOSTFILE:-$here/huge_4node.hostfile}
if [[ $(grep -cE '^[^#[:space:]]+[[:space:]]+slots=8' "$hostfile") -ne 4 ]]; then
  echo "$hostfile: expected 4 lines '<host> slots=8' (this recipe's batch arithmetic assumes 32 GPUs)" >&2
  exit 2
fi
exec "$here/multi_node.sh" "$hostfile" pretrain --config "$here/configs/huge_4node.toml" "$@"
