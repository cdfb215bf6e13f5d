"""Where does an OFA training step spend its time? (companion of gpu_check.py)

    python benchmarks/profile_step.py [--model base] [--variant fused_sdpa] [--batches 8,32]

Prints, per batch size, the median step time and MFU, then for the first batch size a
torch.profiler summary: GPU busy time per step against wall time (a large gap means the
step is bound by CPU-side launch overhead, not by the GPU) and the top operators by GPU
time.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).with_name("gpu_check.py"))
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base")
    p.add_argument("--variant", default="fused_sdpa", choices=list(gpu_check.VARIANTS))
    p.add_argument("--batches", default="8,32")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    image, src, tgt = (384, 64, 32) if device.type == "cuda" else (64, 16, 8)
    gargs = argparse.Namespace(device=device, warmup=2, steps=args.steps, patches=(image // 16) ** 2, src=src, tgt=tgt)
    peak = gpu_check.measure_peak(device, dtype, quick=True)
    model = gpu_check.build_model(args.model, device, dtype)
    for i, B in enumerate(int(b) for b in args.batches.split(",")):
        batch = gpu_check.synthetic_batch(model.config, B, image, src, tgt, device, dtype)
        flops = gpu_check.count_flops(model, batch)
        row = gpu_check.bench_variant(model, batch, args.variant, gargs, flops, peak)
        print(f"ofa_{args.model} {args.variant} batch {B}: {row['step_ms']:.1f} ms/step, "
              f"{row['tokens_s']:.0f} tokens/s, MFU {row['mfu']:.1%}, {row['mem_gib']:.1f} GiB", flush=True)
        if i == 0:
            profile(model, batch, args.variant, device)
    return 0


def profile(model, batch, variant, device) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    gpu_check.kernels.configure(gpu_check.VARIANTS[variant][0])
    fused = {"fused": True} if gpu_check.VARIANTS[variant][1] and device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **fused)
    gpu_check.train_step(model, batch, optimizer)
    gpu_check.sync(device)
    n = 3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(n):
            gpu_check.train_step(model, batch, optimizer)
        gpu_check.sync(device)
        wall = (time.perf_counter() - t) / n
    events = prof.key_averages()
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    # Only the kernel rows (device events): CPU-op rows also carry their kernels' time.
    kernel_rows = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    busy = sum(getattr(e, attr) for e in kernel_rows) / 1e3 / n
    print(f"profiled: wall {wall * 1e3:.1f} ms/step (with profiler), GPU kernels {busy:.1f} ms/step "
          f"({busy / (wall * 1e3):.0%} busy)")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
