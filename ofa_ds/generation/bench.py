"""``ofa-ds bench generate``: beam-search captioning throughput.

    ofa-ds bench generate --flavor tiny --batch 8 --image-size 256 --repeats 5

Measures best-hypothesis tokens per second (eos included) of OFA's caption search (beam 5,
at most 16 tokens, no repeated 3-grams) on random images, encoder included. Two variants run
interleaved (A B A B, medians): ``batched`` (every beam of every image in one decoder forward
per step, the default) and ``per-image`` (one image at a time, for comparison).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.engine.bench import pin_malloc
from ofa_ds.generation.presets import task_generation_config
from ofa_ds.generation.generator import SequenceGenerator
from ofa_ds.model.ofa import OFAModel

PROMPT_IDS = [0, 99, 473, 5, 2274, 6190, 116, 2]  # <s> what does the image describe? </s>


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ofa-ds bench generate", description=__doc__.split("\n")[0])
    p.add_argument("--flavor", default="tiny", help="model size (random weights) unless --checkpoint")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--task", default="caption", help="decoding settings (ofa_ds.generation.presets)")
    p.add_argument("--max-len-b", type=int, default=None, help="override the task's max_len_b")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="batched,per-image")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def run_once(gen: SequenceGenerator, src, images, per_image: bool) -> tuple[float, int]:
    """(seconds, best-hypothesis tokens) of one search over the batch."""
    B = src.shape[0]
    lengths = src.ne(1).sum(1)
    chunks = [slice(i, i + 1) for i in range(B)] if per_image else [slice(0, B)]
    t0 = time.perf_counter()
    tokens = 0
    for c in chunks:
        hyps = gen.generate(src[c], lengths[c], patch_images=images[c],
                            patch_masks=torch.ones(images[c].shape[0], dtype=torch.bool))
        tokens += sum(int(h[0]["tokens"].numel()) for h in hyps)
    return time.perf_counter() - t0, tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_malloc(64 << 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model = OFAModel.from_pretrained(args.checkpoint)
    else:
        model = OFAModel(get_flavor(args.flavor, vocab_size=59457))
    model.eval()
    overrides = {} if args.max_len_b is None else {"max_len_b": args.max_len_b}
    gen = SequenceGenerator(model, task_generation_config(args.task, **overrides), progress=False)
    src = torch.tensor([PROMPT_IDS] * args.batch)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:  # warm-up
        run_once(gen, src, images, v == "per-image")
    for _ in range(args.repeats):
        for v in variants:
            dt, n = run_once(gen, src, images, v == "per-image")
            results[v].append(n / dt)
    print(f"{args.flavor if not args.checkpoint else args.checkpoint}: batch {args.batch}, {args.image_size} px, "
          f"{gen.cfg.beam} beams, max_len_b {gen.cfg.max_len_b}, {torch.get_num_threads()} threads")
    for v, rates in results.items():
        print(f"  {v:10s} {statistics.median(rates):7.1f} best-hypothesis tokens/s "
              f"(median of {len(rates)}; min {min(rates):.1f}, max {max(rates):.1f})")
    return 0
