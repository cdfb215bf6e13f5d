"""``ofa-ds bench data``: mixed-stream pretraining samples per second, per loader worker.

Runs the real pretraining loader (all four streams, OFA's default mix and image sizes: 384 px
VL, 256 px extras) on the sample data (``ofa-ds make-sample-data``; written to a temporary
directory unless ``--data`` names one) for each requested worker count, and prints samples/s
overall and per worker. The first micro-batch of each run (worker start-up, file indexing) is
not timed. Torch runs single-threaded, as it does inside DataLoader workers.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch


def _measure(cfg, vocab, *, workers: int, batches: int, micro_batch_vl_rows: int) -> dict:
    from ofa_ds.data.pretrain import build_pretrain_loader

    loader = build_pretrain_loader(cfg, vocab, micro_batch_vl_rows=micro_batch_vl_rows, num_workers=workers)
    samples, done, start = 0, -1, 0.0
    while done < batches:
        for vl, extras in loader:
            if done < 0:
                start = time.perf_counter()  # after the first batch: workers are up
            else:
                samples += vl["nsentences"] + (extras["nsentences"] if extras is not None else 0)
            done += 1
            if done == batches:
                break
    seconds = time.perf_counter() - start
    rate = samples / seconds
    return {"workers": workers, "batches": batches, "samples": samples, "seconds": seconds,
            "samples_per_s": rate, "samples_per_s_per_worker": rate / max(workers, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-ds bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="sample-data directory (default: write one to a temp dir)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    parser.add_argument("--batches", type=int, default=20, help="timed micro-batches per run (default 20)")
    parser.add_argument("--micro-batch-vl-rows", type=int, default=8)
    parser.add_argument("--patch-image-size", type=int, default=384)
    parser.add_argument("--code-image-size", type=int, default=128)
    parser.add_argument("--vl-stages", action="store_true",
                        help="vision-language rows/s per core before/after the fast paths, and time per stage "
                             "(ofa_ds/data/bench_stages.py) instead of the mixed loader")
    parser.add_argument("--jpeg-scale", type=float, default=None,
                        help="with --vl-stages: re-encode the VL images as JPEG, sides x this (OFA's data is JPEG)")
    parser.add_argument("--rows", type=int, default=64, help="with --vl-stages: rows per timed pass")
    parser.add_argument("--rounds", type=int, default=3, help="with --vl-stages: interleaved before/after rounds")
    args = parser.parse_args(argv)
    logging.getLogger("ofa_ds.data").setLevel(logging.WARNING)
    # DataLoader workers run torch single-threaded; do the same in-process so that the
    # workers=0 row is the cost of one worker too.
    torch.set_num_threads(1)

    from ofa_ds.data.vocab import Vocabulary
    from preprocessing.make_sample_data import pretrain_config, write_sample_data

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp)
            write_sample_data(root, code_image_size=args.code_image_size)
        vocab = Vocabulary.from_dir(root / "vocab")
        if args.vl_stages:
            from ofa_ds.data import bench_stages

            if args.jpeg_scale:
                root = bench_stages.write_jpeg_copy(root, Path(tmp) / "jpeg", args.jpeg_scale)
            print(f"ofa-ds bench data --vl-stages: {root}, VL {args.patch_image_size} px"
                  + (f", images re-encoded as JPEG x{args.jpeg_scale:g}" if args.jpeg_scale else ""))
            bench_stages.print_report(bench_stages.run(root, vocab, size=args.patch_image_size, rows=args.rows,
                                                       rounds=args.rounds))
            return 0
        cfg = pretrain_config(root, patch_image_size=args.patch_image_size, code_image_size=args.code_image_size)
        print(f"ofa-ds bench data: {root}, VL {cfg.patch_image_size} px, extras {2 * cfg.code_image_size} px, "
              f"{args.micro_batch_vl_rows} VL rows per micro-batch, torch threads {torch.get_num_threads()}")
        print(f"{'workers':>7} {'batches':>7} {'samples':>7} {'seconds':>8} {'samples/s':>10} {'per worker':>10}")
        for workers in args.workers:
            r = _measure(cfg, vocab, workers=workers, batches=args.batches,
                         micro_batch_vl_rows=args.micro_batch_vl_rows)
            print(f"{r['workers']:>7} {r['batches']:>7} {r['samples']:>7} {r['seconds']:>8.2f} "
                  f"{r['samples_per_s']:>10.1f} {r['samples_per_s_per_worker']:>10.1f}")
    return 0
