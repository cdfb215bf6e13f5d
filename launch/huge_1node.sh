#!/usr/bin/env bash
# OFA-Huge pretraining on one node with 8 GPUs (80 GB each): DP=8, ZeRO-1, bf16.
#   launch/huge_1node.sh data.root=/data/ofa [--init-from ofa_huge.pt] [section.field=value ...]
# Recipe: launch/configs/huge_1node.toml; reasons: ofa_ds/parallel/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/single_node.sh" 8 pretrain --config "$here/configs/huge_1node.toml" "$@"
