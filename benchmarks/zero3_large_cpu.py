"""OFA-Large under ZeRO-3 + CPU offload on 2 CPU ranks through ``ofa-ds pretrain`` (the
deepspeed launcher): does it initialise (``zero.Init``, ``init_from`` copied one parameter at a
time) and run steps within the machine's memory? Reports each rank's peak RSS (VmHWM, polled
from /proc) and the step times from metrics.jsonl.

    python benchmarks/zero3_large_cpu.py --sample-data sample_data --work /tmp/z3large [--steps 2]
        [--deepspeed-template zero3_offload_host.json]

The first run writes a random OFA-Large checkpoint (ofa-ds format, ~1.9 GB) for init_from.
Images are small (128 px, 32 sampled patches; extras at 64 px: make the sample data with
--code-image-size 32) so activations stay small: this measures model
states, not activations.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_pids() -> dict[int, str]:
    """pid -> the rank's --local_rank argument (processes forked from a rank share its
    command line; their VmHWM never exceeds the rank's own, so the max per rank is the rank)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [a.decode() for a in cmd if a.startswith(b"--local_rank")]
            if b"ofa_ds.train" in cmd and ranks:
                pids[int(entry.name)] = ranks[0]
    return pids


def _peak_rss_gib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _make_init_checkpoint(sample_data: Path, dst: Path) -> None:
    if (dst / "model.safetensors").is_file():
        return
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.model.ofa import OFAModel

    vocab = Vocabulary.from_dir(sample_data / "vocab")
    OFAModel(get_flavor("large", vocab_size=len(vocab))).save_pretrained(dst)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample-data", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-init-from", action="store_true", help="random init instead of init_from")
    p.add_argument("--checkpoint-activations", action="store_true", help="model.activation_checkpointing=true")
    p.add_argument("--deepspeed-template", default="auto",
                   help="train.deepspeed_template, e.g. zero3_offload_host.json (smaller buckets)")
    args = p.parse_args(argv)
    init = args.work / "large_init"
    if not args.no_init_from:
        t0 = time.perf_counter()
        _make_init_checkpoint(args.sample_data, init)
        print(f"init checkpoint ready in {time.perf_counter() - t0:.0f} s", flush=True)
    out = args.work / "run"
    overrides = {"model.flavor": "large", "data.root": str(args.sample_data), "data.patch_image_size": 128,
                 "data.code_image_size": 32, "data.sample_patch_num": 32, "train.micro_batch": 8,
                 "train.max_steps": args.steps, "train.save_every": 0, "train.zero_stage": 3,
                 "train.offload": True, "train.out_dir": str(out), "train.progress_bar": False,
                 "train.tensorboard": False, "train.export_format": "none", "train.image_log_every": 0,
                 "model.activation_checkpointing": args.checkpoint_activations,
                 "train.deepspeed_template": args.deepspeed_template}
    if not args.no_init_from:
        overrides["model.init_from"] = str(init)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
           str(_free_port()), "--module", "ofa_ds.train", "pretrain", *[f"{k}={v}" for k, v in overrides.items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    log_path = args.work / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peaks: dict[str, float] = {}
        while proc.poll() is None:
            for pid, rank in _rank_pids().items():
                rss = _peak_rss_gib(pid)
                if rss is not None:
                    peaks[rank] = max(peaks.get(rank, 0.0), rss)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    text = log_path.read_text()
    if proc.returncode != 0:
        print(text[-5000:])
        print(f"FAILED (exit {proc.returncode}) after {wall:.0f} s; peak RSS so far "
              f"{ {k: round(v, 2) for k, v in sorted(peaks.items())} } GiB")
        return 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_time"] for r in rows if "step_time" in r]
    print(f"OFA-Large, ZeRO-3 + offload, 2 CPU ranks, {'init_from' if not args.no_init_from else 'random init'}: "
          f"wall {wall:.0f} s (launch + init + {len(steps)} steps)")
    print("peak RSS per rank (GiB):", {k: round(v, 2) for k, v in sorted(peaks.items())})
    print("step times (s):", [round(s, 1) for s in steps])
    print("losses:", [round(r["loss"], 4) for r in rows if "loss" in r])
    return 0


if __name__ == "__main__":
    sys.exit(main())
