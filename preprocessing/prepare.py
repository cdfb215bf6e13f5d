"""``ofa-ds prepare KIND ...``: convert a public dataset layout into ofa-ds / OFA TSV shards.

Every kind shares the engine options (``--out``, ``--name``, ``--shard-records``, ``--workers``,
``--strict``, ``--overwrite``, ``--limit``, ``--merge``) and, where rows carry images,
``--max-side`` / ``--jpeg-quality`` (without them image bytes are copied unchanged). Run
``ofa-ds prepare KIND --help`` for a kind's own inputs. See preprocessing/engine.py for
sharding, resume and bad-record counting.
"""
from __future__ import annotations

import argparse
import os
import sys

from ofa_ds.data.bad_rows import BadRow
from preprocessing.images import ImageOptions


def _engine_args(p: argparse.ArgumentParser, images: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--name", help="shard name prefix (default: the kind, or kind-split)")
    g.add_argument("--shard-records", type=int, default=10000, help="input records per output shard (default 10000)")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes; 0 converts in this process (default: cores, at most 8)")
    g.add_argument("--strict", action="store_true", help="stop at the first bad record instead of counting it")
    g.add_argument("--overwrite", action="store_true", help="delete an earlier conversion of this name first")
    g.add_argument("--limit", type=int, help="convert only the first N records")
    g.add_argument("--merge", action="store_true", help="also concatenate the shards into NAME.tsv")
    g.add_argument("--no-progress", action="store_true")
    if images:
        g.add_argument("--max-side", type=int, help="re-encode images larger than this (longer side, px)")
        g.add_argument("--jpeg-quality", type=int, help="re-encode images as JPEG at this quality")


def _opts(a) -> dict:
    opts = {}
    if getattr(a, "to", None):
        opts.update(to=a.to, dataset_name=a.dataset_name or "")
    if getattr(a, "max_side", None) is not None or getattr(a, "jpeg_quality", None) is not None:
        opts["image_options"] = ImageOptions(max_side=a.max_side, jpeg_quality=a.jpeg_quality)
    return opts


def _vl_target(p: argparse.ArgumentParser, finetune: str) -> None:
    p.add_argument("--to", choices=(finetune, "vision-language"), default=finetune,
                   help=f"the {finetune} finetuning TSV (default) or pretraining vision-language rows")
    p.add_argument("--dataset-name", help="vision-language dataset_name column (default: the kind)")


def _build_coco_captions(a):
    from preprocessing.sources.coco import CocoCaptions
    per = {"caption": True, "image": False}.get(a.rows_per)
    return CocoCaptions(a.annotations, a.images, splits=a.split.split(","), per_caption=per, **_opts(a)), a.split


def _build_detection(a):
    from preprocessing.sources.coco import CocoDetection
    return CocoDetection(a.annotations, a.images, keep_crowd=a.keep_crowd, **_opts(a)), None


def _build_vqa(a):
    from preprocessing.sources.vqa import VQA
    return VQA(a.questions, a.annotations, a.images, image_pattern=a.image_pattern, ans2label=a.ans2label,
               min_answer_count=a.min_answer_count, keep_all_answers=a.keep_all_answers, **_opts(a)), None


def _build_refcoco(a):
    from preprocessing.sources.refcoco import RefCOCO
    return RefCOCO(a.refs, a.instances, a.images, split=a.split, **_opts(a)), a.split


def _build_snli_ve(a):
    from preprocessing.sources.snli_ve import SNLIVE
    return SNLIVE(a.jsonl, a.images, **_opts(a)), None


def _build_glue(a):
    from preprocessing.sources.glue import GLUE
    return GLUE(a.task, a.tsv), a.task


def _build_imagenet(a):
    from preprocessing.sources.imagenet import ImageNetFolder
    return ImageNetFolder(a.root, class_names=a.class_names, **_opts(a)), None


def _build_image_text(a):
    from preprocessing.sources.image_text import ImageFolderCaptions
    return ImageFolderCaptions(a.captions, a.images, dataset_name=a.dataset_name, image_key=a.image_key,
                               text_key=a.text_key, **_opts(a)), None


def _build_text(a):
    from preprocessing.sources.text import TextCorpus
    return TextCorpus(a.input, text_key=a.text_key), None


def _build_gigaword(a):
    from preprocessing.sources.text import Gigaword
    return Gigaword(a.source, a.target), None


def _build_webdataset(a):
    from preprocessing.sources.image_text import WebDatasetIn
    return WebDatasetIn(a.tars, dataset_name=a.dataset_name, **_opts(a)), None


def _build_to_webdataset(a):
    from preprocessing.sources.image_text import WebDatasetOut
    return WebDatasetOut(a.tsv, a.format), None


def _build_image_codes(a):
    from preprocessing.sources.image_codes import ImageCodes
    return ImageCodes(task=a.task, images_root=a.images, captions=a.captions, from_tsv=a.from_tsv,
                      tsv_format=a.format, checkpoint=a.checkpoint,
                      flavor=a.flavor, random_init=a.random_init, trust_checkpoint=a.trust_checkpoint,
                      batch_size=a.batch_size, device=a.device, image_key=a.image_key,
                      text_key=a.text_key), a.task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-ds prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind(name, build, help_, images=True):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(build=build)
        _engine_args(p, images)
        return p

    p = kind("coco-captions", _build_coco_captions, "COCO captions (Karpathy dataset_coco.json or captions_*.json) -> caption TSV")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True, help="image root (Karpathy: holds train2014/, val2014/)")
    p.add_argument("--split", default="train", help="Karpathy split(s), comma-separated (default train)")
    p.add_argument("--rows-per", choices=("caption", "image"),
                   help="one row per caption (default for train) or per image with all references joined by &&")
    _vl_target(p, "caption")

    p = kind("vqa", _build_vqa, "VQA v2 questions + annotations JSON -> vqa TSV (+ ans2label)")
    p.add_argument("--questions", required=True)
    p.add_argument("--annotations", help="omit for the test split (rows get no answers)")
    p.add_argument("--images", required=True)
    p.add_argument("--image-pattern", help="image path under --images (default COCO_<data_subtype>_{image_id:012d}.jpg)")
    p.add_argument("--ans2label", help="use this candidate set (.pkl or .json) instead of building one")
    p.add_argument("--min-answer-count", type=int, default=9)
    p.add_argument("--keep-all-answers", action="store_true", help="keep answers outside the candidate set")
    _vl_target(p, "vqa")

    p = kind("refcoco", _build_refcoco, "RefCOCO/+/g refs(*).p + instances.json -> refcoco TSV")
    p.add_argument("--refs", required=True, help="refs(unc).p / refs(google).p / refs(umd).p")
    p.add_argument("--instances", required=True)
    p.add_argument("--images", required=True, help="COCO train2014 images")
    p.add_argument("--split", default="train", help="train, val, testA, testB or test")
    _vl_target(p, "refcoco")

    p = kind("snli-ve", _build_snli_ve, "SNLI-VE JSONL + Flickr30k images -> snli_ve TSV")
    p.add_argument("--jsonl", required=True)
    p.add_argument("--images", required=True)

    p = kind("glue", _build_glue, "a GLUE task file -> OFA's GLUE TSV", images=False)
    p.add_argument("--task", required=True, choices=("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli"))
    p.add_argument("--tsv", required=True, help="the task's train.tsv / dev.tsv")

    p = kind("imagenet", _build_imagenet, "ImageNet-style class folders -> imagenet TSV (+ class2label_new)")
    p.add_argument("--root", required=True)
    p.add_argument("--class-names", help="LOC_synset_mapping.txt-style lines or JSON {folder: name}")

    p = kind("detection", _build_detection, "COCO / Objects365 instances JSON -> detection TSV")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--keep-crowd", action="store_true")

    p = kind("image-text", _build_image_text, "image folder + CSV/TSV/JSONL captions -> vision-language TSV")
    p.add_argument("--captions", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--dataset-name", default="", help="dataset_name column (cc12m gets OFA's special target)")
    p.add_argument("--image-key")
    p.add_argument("--text-key")

    p = kind("text", _build_text, "a text corpus (.txt, one document per line, or .jsonl) -> text-infilling TSV",
             images=False)
    p.add_argument("input")
    p.add_argument("--text-key", help="JSONL field (default text, caption)")

    p = kind("gigaword", _build_gigaword, "Gigaword's aligned article/title files -> gigaword TSV", images=False)
    p.add_argument("--source", required=True, help="e.g. train.article.txt")
    p.add_argument("--target", required=True, help="e.g. train.title.txt")

    p = kind("webdataset", _build_webdataset, "webdataset .tar shards (image + txt/json) -> vision-language TSV")
    p.add_argument("tars", nargs="+")
    p.add_argument("--dataset-name", default="")

    p = kind("to-webdataset", _build_to_webdataset, "an ofa-ds TSV -> webdataset .tar shards", images=False)
    p.add_argument("tsv")
    p.add_argument("--format", required=True, help="the TSV's format (see ofa-ds inspect --formats)")

    p = kind("image-codes", _build_image_codes,
             "VQ-GAN codes: image-infilling rows (256x256 image, 256 centre codes) or text-to-image rows", images=False)
    p.add_argument("--task", choices=("infilling", "text-to-image"), default="infilling")
    p.add_argument("--images", help="image folder (infilling: every image under it)")
    p.add_argument("--captions", help="text-to-image: CSV/TSV/JSONL of image name + caption")
    p.add_argument("--from-tsv", help="take images (and captions) from this ofa-ds TSV instead of a folder")
    p.add_argument("--format", help="the --from-tsv file's format, e.g. vision-language or caption")
    p.add_argument("--image-key")
    p.add_argument("--text-key")
    p.add_argument("--checkpoint", help="taming-transformers VQ-GAN checkpoint (.ckpt / .pt / .safetensors)")
    p.add_argument("--flavor", help="gumbel_f8 (OFA's) / f16 / tiny; default: inferred from the checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that pickles objects")
    p.add_argument("--random-init", action="store_true", help="random weights (smoke tests: codes are meaningless)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    from preprocessing.engine import merge_shards, run
    try:
        converter, suffix = a.build(a)
        name = a.name or (f"{a.kind}-{suffix}" if suffix else a.kind)
        summary = run(converter, a.out, name=name, shard_records=a.shard_records, workers=a.workers,
                      strict=a.strict, overwrite=a.overwrite, limit=a.limit, progress=False if a.no_progress else None)
    except BadRow as err:
        print(f"ofa-ds prepare: bad record (--strict): {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"ofa-ds prepare: {err}", file=sys.stderr)
        return 2
    print(summary.report())
    if a.merge and converter.writer == "tsv":
        print(f"merged into {merge_shards(a.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
