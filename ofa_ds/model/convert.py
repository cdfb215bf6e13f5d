"""``ofa-ds convert SRC DST --to {ofa-ds,hf,fairseq}``."""
from __future__ import annotations

import argparse

import torch

from ofa_ds.model.checkpoint import FORMATS, load_pretrained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-ds convert", description=__doc__)
    parser.add_argument("src", help="fairseq .pt file, OFA-HF directory or ofa-ds directory")
    parser.add_argument("dst", help="output directory (or .pt file for --to fairseq)")
    parser.add_argument("--to", choices=FORMATS, required=True)
    parser.add_argument("--patch-image-size", type=int, default=None,
                        help="interpolate the image position embeddings to this image size")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="dtype of the written weights (fairseq releases are float16)")
    args = parser.parse_args(argv)
    model = load_pretrained(args.src, patch_image_size=args.patch_image_size)
    model = model.to(getattr(torch, args.dtype))
    out = model.save_pretrained(args.dst, format=args.to)
    print(f"wrote {args.to} checkpoint ({model.num_parameters():,} parameters) to {out}")
    return 0
