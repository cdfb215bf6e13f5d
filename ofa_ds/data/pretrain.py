"""Build the pretraining data loader the engine calls (spec §3).

::

    cfg = PretrainDataConfig(vision_language="data/vision_language_examples.tsv",
                             text="data/text_examples.tsv", image="data/image_examples.tsv",
                             detection="data/detection_examples.tsv", negative_sample_dir="data/negative")
    loader = build_pretrain_loader(cfg, vocab, rank=rank, world_size=world, seed=7,
                                   micro_batch_vl_rows=8, num_workers=2)
    for vl_batch, extras_batch in loader:      # one epoch per iter(); batch dicts: collate.py
        ...
    ckpt["data"] = loader.state_dict()         # restores the exact next micro-batch
    loader.load_state_dict(ckpt["data"])

Defaults are OFA's pretraining settings (384 px VL images, 256 px extras, 80/30 words,
1000 bins over a 512 px canvas). One file per stream: the per-epoch
shuffle replaces upstream's list of pre-shuffled copies.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ofa_ds.data.bad_rows import BadRowPolicy
from ofa_ds.data.mixture import DEFAULT_WEIGHTS, VL, BatchBuilder, MixtureLoader, MixturePlan
from ofa_ds.data.streams import (
    DetectionStream, ImageInfillingStream, NegativeSamples, TextInfillingStream, VisionLanguageStream,
)
from ofa_ds.data.tsv import TSVFile

logger = logging.getLogger("ofa_ds.data")


@dataclass
class PretrainDataConfig:
    """Where the pretraining data lives and how samples are built."""

    vision_language: str
    """``vision_language_examples.tsv``: uniq_id, image, caption, question, refs, gt_objects, dataset_name, type."""
    text: str | None = None
    """``text_examples.tsv``: uniq_id, text. None leaves the stream out of the mix."""
    image: str | None = None
    """``image_examples.tsv``: image_id, image (2C×2C), code ((C/8)² ints)."""
    detection: str | None = None
    """``detection_examples.tsv``: image_id, image, label (x0,y0,x1,y1,cat_id,name&&...)."""
    negative_sample_dir: str | None = None
    """Folder with all_captions.txt, object.txt, type2ans.json for image-text matching."""
    selected_cols: dict[str, str] = field(default_factory=lambda: {
        VL: "0,1,2,3,4,5,6,7", "text": "0,1", "image": "0,1,2", "detection": "0,1,2"})
    """Per stream: which TSV columns, in which order, give the fields above."""
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    """Share of samples per stream; the default is OFA's 16 VL : 2 text : 1 image : 1 detection."""
    patch_image_size: int = 384
    """VL image side after RandomResize + crop."""
    code_image_size: int = 128
    """Side of the infilled centre; extras images are 2× this (256)."""
    max_src_length: int = 80
    """Word limit of questions / referring expressions in prompts."""
    max_tgt_length: int = 30
    """Word limit of target captions."""
    num_bins: int = 1000
    max_image_size: int = 512
    """Fixed canvas that box coordinates are divided by before binning."""
    resize_max_size: int = 672
    """Clamp of each side in VL RandomResize."""
    sample_patch_num: int | None = None
    """If set, the loader writes it into the VL batch's ``net_input`` in pair mode (OFA uses 196 when
    pretraining at 384 px). None leaves it to the task, which passes its own setting to the model."""
    extras_loss_weight: float = 1.0
    """Weight of the extras group's per-token loss next to the VL group's."""
    strict: bool = False
    """Fail on the first bad row instead of skipping and counting it."""

    def validate(self) -> None:
        if self.patch_image_size % 16 or self.code_image_size % 8:
            raise ValueError(f"patch_image_size must be a multiple of 16 and code_image_size of 8, "
                             f"got {self.patch_image_size}, {self.code_image_size}")
        if (2 * self.code_image_size) % 16:
            raise ValueError(f"extras images (2 x code_image_size = {2 * self.code_image_size}) must be a "
                             "multiple of 16 px")
        if self.weights.get(VL, 0) > 0 and not self.negative_sample_dir:
            raise ValueError("negative_sample_dir is required: image-text matching draws negatives from it")


_EXTRA_FILES = ("text", "image", "detection")


def build_pretrain_loader(cfg: PretrainDataConfig, vocab, *, rank: int = 0, world_size: int = 1, seed: int = 7,
                          micro_batch_vl_rows: int = 8, num_workers: int = 0, pin_memory: bool = False,
                          epoch: int = 1) -> MixtureLoader:
    """The resumable ``(vl_batch, extras_batch)`` loader of one data-parallel rank.

    ``micro_batch_vl_rows`` counts VL *rows* per rank and micro-batch (each gives two samples)
    and must be a multiple of 8. Streams whose file is None are left out of the mix whatever
    their weight, as upstream skips unconfigured streams.
    """
    cfg.validate()
    weights = {name: w for name, w in cfg.weights.items() if name == VL or getattr(cfg, name, None)}
    dropped = sorted(set(cfg.weights) - set(weights))
    if dropped:
        logger.info("no file for streams %s: left out of the mixture", dropped)

    tsvs = {VL: TSVFile(cfg.vision_language, cfg.selected_cols[VL])}
    tsvs.update({name: TSVFile(getattr(cfg, name), cfg.selected_cols[name])
                 for name in _EXTRA_FILES if weights.get(name, 0) > 0})
    plan = MixturePlan({name: len(t) for name, t in tsvs.items()}, vl_rows_per_batch=micro_batch_vl_rows,
                       seed=seed, rank=rank, world_size=world_size, weights=weights)
    logger.info("%s", plan.describe())

    extras_size = 2 * cfg.code_image_size
    streams = {VL: VisionLanguageStream(
        tsvs[VL], vocab, NegativeSamples.from_dir(cfg.negative_sample_dir),
        patch_image_size=cfg.patch_image_size, resize_max_size=cfg.resize_max_size,
        max_src_length=cfg.max_src_length, max_tgt_length=cfg.max_tgt_length,
        max_image_size=cfg.max_image_size, num_bins=cfg.num_bins)}
    if "text" in plan.counts:
        streams["text"] = TextInfillingStream(tsvs["text"], vocab, image_size=extras_size)
    if "image" in plan.counts:
        streams["image"] = ImageInfillingStream(tsvs["image"], vocab, code_image_size=cfg.code_image_size)
    if "detection" in plan.counts:
        streams["detection"] = DetectionStream(tsvs["detection"], vocab, image_size=extras_size,
                                               max_image_size=cfg.max_image_size, num_bins=cfg.num_bins)

    builder = BatchBuilder(plan, streams, pad=vocab.pad, bos=vocab.bos, eos=vocab.eos,
                           vl_image_size=cfg.patch_image_size, sample_patch_num=cfg.sample_patch_num,
                           strict=cfg.strict)
    return MixtureLoader(builder, num_workers=num_workers, policy=BadRowPolicy(strict=cfg.strict),
                         pin_memory=pin_memory, extras_loss_weight=cfg.extras_loss_weight, epoch=epoch)
