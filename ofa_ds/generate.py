"""``ofa-ds generate``: caption / answer one image with a prompt.

    ofa-ds generate --checkpoint ofa_base.pt --vocab BPE_DIR --image cat.jpg \\
        --prompt " what does the image describe?" --beam 5 --max-len-b 16

The image is resized (bicubic) to the patch size, turned into a [0, 1] tensor and normalised
with mean = std = 0.5, as OFA's caption/VQA datasets do at evaluation time.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image


def load_image(path: str, size: int) -> torch.Tensor:
    """[3, size, size] float tensor in [-1, 1]."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ofa-ds generate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="fairseq .pt, OFA-HF or ofa-ds directory")
    p.add_argument("--vocab", required=True, help="vocabulary directory (dict.txt + BPE files)")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", default=" what does the image describe?",
                   help="source text; literal <bin_i>, <code_i>, <mask> in it are those symbols")
    p.add_argument("--patch-image-size", type=int, default=None,
                   help="image side (default: the checkpoint's patch_image_size)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-len-a", type=float, default=0.0)
    p.add_argument("--max-len-b", type=int, default=16)
    p.add_argument("--min-len", type=int, default=1)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--unnormalized", action="store_true", help="rank by summed log-prob")
    p.add_argument("--no-repeat-ngram-size", type=int, default=3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--constraint-range", default=None, help="'start,end' of allowed ids (ids 0-3 always)")
    p.add_argument("--nbest", type=int, default=1, help="print this many hypotheses with scores")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.generation import GenerationConfig, SequenceGenerator
    from ofa_ds.model.ofa import OFAModel

    args = parse_args(argv)
    model = OFAModel.from_pretrained(args.checkpoint, patch_image_size=args.patch_image_size)
    model = model.to(args.device).eval()
    vocab = Vocabulary.from_dir(args.vocab)

    src = vocab.encode_line(args.prompt, parse_symbols=True)[None].to(args.device)  # [1, S]; <bin_i> etc. meant
    image = load_image(args.image, model.config.patch_image_size)[None].to(args.device)
    config = GenerationConfig(
        beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b, min_len=args.min_len,
        lenpen=args.lenpen, normalize_scores=not args.unnormalized, temperature=args.temperature,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        constraint_range=tuple(map(int, args.constraint_range.split(","))) if args.constraint_range else None)
    hyps = SequenceGenerator(model, config).generate(
        src, src.ne(vocab.pad).sum(1), patch_images=image,
        patch_masks=torch.ones(1, dtype=torch.bool, device=args.device))[0]
    if args.nbest <= 1:
        print(vocab.decode(hyps[0]["tokens"]).strip())
    else:
        for h in hyps[: args.nbest]:
            print(f"{h['score']:.4f}\t{vocab.decode(h['tokens']).strip()}")
    return 0
