"""``ofa-ds convert SRC DST --to {ofa-ds,hf,fairseq}``."""
from __future__ import annotations

import argparse
import sys

import torch

from ofa_ds.model.checkpoint import FORMATS, HF_WEIGHTS, load_pretrained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-ds convert", description=__doc__)
    parser.add_argument("src", help="fairseq .pt file, OFA-HF directory or ofa-ds directory")
    parser.add_argument("dst", help="output directory (or .pt file for --to fairseq)")
    parser.add_argument("--to", choices=FORMATS, required=True)
    parser.add_argument("--patch-image-size", type=int, default=None,
                        help="interpolate the image position embeddings to this image size")
    parser.add_argument("--dtype", choices=("source", "float32", "float16", "bfloat16"), default="source",
                        help="dtype of the written weights; default: the source's (released OFA .pt files "
                             "are float16)")
    parser.add_argument("--hf-weights", choices=HF_WEIGHTS, default="bin",
                        help="--to hf: pytorch_model.bin (default; what OFA-HF on its transformers 4.18 "
                             "reads), model.safetensors, or both")
    args = parser.parse_args(argv)
    dtype = None if args.dtype == "source" else getattr(torch, args.dtype)
    try:
        model = load_pretrained(args.src, patch_image_size=args.patch_image_size, dtype=dtype)
        out = model.save_pretrained(args.dst, format=args.to, hf_weights=args.hf_weights)
    except ValueError as err:  # a checkpoint we refuse to read or write: the reason, no traceback
        print(f"ofa-ds convert: error: {err}", file=sys.stderr)
        return 2
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"wrote {args.to} checkpoint ({model.num_parameters():,} parameters, {dtype_name}) to {out}")
    return 0
