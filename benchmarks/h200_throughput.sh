#!/usr/bin/env bash
# Issue 13 on one H100/H200, in one go (~7.5 minutes of command time):
#   parity   gpu_check parity of the fused kernels and of the speed switches (bf16 bounds)  ~1.5 min
#   eager    the pretraining step through DeepSpeed: eager switches each alone, A/B interleaved,
#            profiles, micro-batch sweep to OOM, ZeRO-2 (OFA-Large), then OFA-Base        ~2.7 min
#   compile  compiled ResNet / layers / both (+ CUDA graphs), and the sweep of the best     ~3.3 min
# Each section has its own wall-clock budget and timeout; the text and JSON go to $OUT.
#
#   bash benchmarks/h200_throughput.sh "$OUT"            # all sections
#   bash benchmarks/h200_throughput.sh "$OUT" compile    # one section (a rerun)
#
# The device machine has its own torch but no DeepSpeed: first, on the CPU machine,
# `bash benchmarks/carry_deepspeed.sh` copies DeepSpeed and its pure-Python dependencies into
# .gpu_carry/ (git-ignored); name `.gpu_carry` in the run's `carry`. Without DeepSpeed the
# script still runs the parity section and a bare-model loop (--engine model) instead.
set -u
OUT=${1:-${OUT:-bench_out}}
SECTION=${2:-all}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/env.txt"
bench() { python -m ofa_ds.cli bench train --device cuda "$@" 2>&1 | grep -v "^\["; }
want() { [ "$SECTION" = all ] || [ "$SECTION" = "$1" ]; }

if want parity; then
  timeout 100 python benchmarks/gpu_check.py --quick --skip-speed --json "$OUT/parity.json" 2>&1 | tee "$OUT/parity.txt"
fi
if ! python -c "import deepspeed" >/dev/null 2>&1; then
  echo "DeepSpeed is not importable here (see carry_deepspeed.sh): bare-model loop only" | tee "$OUT/eager.txt"
  want eager && timeout 200 python -m ofa_ds.cli bench train --engine model --device cuda --flavor large \
    --rows 8 --steps 5 --variants base,rel_gather,channels_last,sdpa 2>&1 | tee -a "$OUT/eager.txt"
  exit 0
fi
if want eager; then
  timeout 120 bash -c "$(declare -f bench); bench --flavors large --zero 1,2 \
    --variants today,rel_gather,channels_last,cudnn_benchmark,mixed_bn,foreach_adam,best_eager \
    --sweep-variant best_eager --sweep 8,16,32,64,128,256 --profile today,best_eager --need-per-variant 12 \
    --time-budget 110 --json $OUT/eager_large.json" | tee "$OUT/eager_large.txt"
  timeout 55 bash -c "$(declare -f bench); bench --flavors base --zero 1 --variants today,best_eager \
    --sweep-variant best_eager --sweep 8,16,32,64,128,256 --profile '' --need-per-variant 8 \
    --time-budget 48 --json $OUT/eager_base.json" | tee "$OUT/eager_base.txt"
fi
if want compile; then
  timeout 210 bash -c "$(declare -f bench); bench --flavors large --zero 1 \
    --variants today,compile_resnet,compile_layers,best,best+graphs --sweep-variant best --sweep 16,32,64,128 \
    --profile best --need-per-variant 15 --time-budget 195 --json $OUT/compile.json" | tee "$OUT/compile.txt"
fi
