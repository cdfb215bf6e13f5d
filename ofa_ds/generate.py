"""``ofa-ds generate``: caption / answer one image with a prompt.

    ofa-ds generate --checkpoint ofa_base.pt --vocab BPE_DIR --image cat.jpg
    ofa-ds generate --task gigaword --checkpoint ... --vocab ... \\
        --prompt ' what is the summary of article " ... "?'

The search uses OFA's settings for ``--task`` (caption: beam 5, at most 16 tokens, no
repeated 3-grams; see ``ofa_ds.generation.presets``); each flag given overrides one setting.
Long searches show a progress bar. The image is resized (bicubic) to the patch size, turned
into a [0, 1] tensor and normalised with mean = std = 0.5, as OFA's caption/VQA datasets do at
evaluation time; without ``--image`` the input is text only.
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


# flag -> GenerationConfig field; a flag left unset keeps the task's setting
_SEARCH_FLAGS = {"beam": "beam", "max_len_a": "max_len_a", "max_len_b": "max_len_b", "min_len": "min_len",
                 "lenpen": "lenpen", "no_repeat_ngram_size": "no_repeat_ngram_size",
                 "temperature": "temperature", "sampling_topk": "sampling_topk", "sampling_topp": "sampling_topp"}


def parse_args(argv):
    from ofa_ds.generation.presets import TASK_GENERATION

    p = argparse.ArgumentParser(prog="ofa-ds generate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="fairseq .pt, OFA-HF or ofa-ds directory")
    p.add_argument("--vocab", required=True, help="vocabulary directory (dict.txt + BPE files)")
    p.add_argument("--task", default="caption", choices=sorted(TASK_GENERATION),
                   help="decoding settings to start from (OFA's per-task settings)")
    p.add_argument("--image", default=None, help="input image (omit for text-only tasks)")
    p.add_argument("--prompt", default=" what does the image describe?",
                   help="source text; literal <bin_i>, <code_i>, <mask> in it are those symbols")
    p.add_argument("--patch-image-size", type=int, default=None,
                   help="image side (default: the checkpoint's patch_image_size)")
    p.add_argument("--beam", type=int, default=None)
    p.add_argument("--max-len-a", type=float, default=None)
    p.add_argument("--max-len-b", type=int, default=None)
    p.add_argument("--min-len", type=int, default=None)
    p.add_argument("--lenpen", type=float, default=None)
    p.add_argument("--unnormalized", action="store_true", help="rank by summed log-prob")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--sampling-topk", type=int, default=None)
    p.add_argument("--sampling-topp", type=float, default=None)
    p.add_argument("--constraint-range", default=None, help="'start,end' of allowed ids (ids 0-3 always)")
    p.add_argument("--nbest", type=int, default=1, help="print this many hypotheses with scores")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def search_config(args, vocab=None):
    """The task's settings with every given flag applied."""
    from ofa_ds.generation.presets import task_generation_config

    overrides = {field: getattr(args, flag) for flag, field in _SEARCH_FLAGS.items()
                 if getattr(args, flag) is not None}
    if args.unnormalized:
        overrides["normalize_scores"] = False
    if args.constraint_range:
        overrides["constraint_range"] = tuple(map(int, args.constraint_range.split(",")))
    return task_generation_config(args.task, vocab, **overrides)


def main(argv: list[str] | None = None) -> int:
    from ofa_ds.data.vocab import Vocabulary
    from ofa_ds.generation import SequenceGenerator
    from ofa_ds.model.ofa import OFAModel

    args = parse_args(argv)
    model = OFAModel.from_pretrained(args.checkpoint, patch_image_size=args.patch_image_size)
    model = model.to(args.device).eval()
    vocab = Vocabulary.from_dir(args.vocab)

    src = vocab.encode_line(args.prompt, parse_symbols=True)[None].to(args.device)  # [1, S]; <bin_i> etc. meant
    size = model.config.patch_image_size
    image = (load_image(args.image, size) if args.image else torch.zeros(3, size, size))[None].to(args.device)
    has_image = torch.tensor([args.image is not None], device=args.device)
    hyps = SequenceGenerator(model, search_config(args, vocab)).generate(
        src, src.ne(vocab.pad).sum(1), patch_images=image, patch_masks=has_image)[0]
    if args.nbest <= 1:
        print(vocab.decode(hyps[0]["tokens"]).strip())
    else:
        for h in hyps[: args.nbest]:
            print(f"{h['score']:.4f}\t{vocab.decode(h['tokens']).strip()}")
    return 0
