"""ImageNet-1K classification as generation over the class names (``image_classify``;
spec ofa_data_and_tasks.md §5.8).

Rows: image (base64), label index, class name; read as (image, class name) with
``selected_cols = 0,2``; the id is the row index. Source " what does the image describe?",
target " {class name}" + eos with ``prompt_type none`` (the decoder prompt is bos); the
constraint allows, at every position, what the class-name trie allows. Evaluation scores
every class name (the fast all-candidate scorer); ``accuracy`` is the metric.

Images use ImageNet's mean/std. Evaluation: resize to a square (bicubic). Training, in OFA's
order: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bicubic), horizontal flip (p 0.5),
RandAugment n=2 m=9 (std 0.5; timm's "rand-m9-mstd0.5-inc1" op list, our implementation: not
bit-equal to timm's), OFA's RandomAugment(2, 7), ToTensor, Normalize, RandomErasing (p 0.25,
per-pixel normal noise, one box). Randomness comes from one generator per (seed, epoch, row),
so a sample does not depend on which worker or rank builds it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import PROMPT_CAPTION
from ofa_ds.data.transforms import RandomAugment, to_tensor
from ofa_ds.data.tsv import decode_base64_image
from ofa_ds.tasks.candidates import AnswerSet, load_answer_list
from ofa_ds.tasks.closed_set import AnswerSetTask, square_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILL = (124, 116, 104)  # ImageNet mean colour, the fill of geometric ops


@dataclass
class ImageClassifyOptions:
    class2label: str = "finetune/imagenet/class2label_new.pkl"
    """Class names, relative to data.root: OFA's pickled {class name: label} or a JSON object or
    list; candidate i is the i-th entry."""
    imagenet_mean_std: bool = True
    """Normalise with ImageNet's mean/std (OFA: --imagenet-default-mean-and-std) instead of 0.5."""
    train_augment: bool = True
    """The random training transform above; False: the evaluation resize also in training."""


# -- RandAugment (n ops, magnitude m with Gaussian jitter; "increasing" op variants) ------------
def _signed(x: float, rng) -> float:
    return -x if rng.random() < 0.5 else x


def _affine(img, coeffs):
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=_FILL)


RAND_AUGMENT_OPS = {
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "Rotate": lambda img, m, rng: img.rotate(_signed(m / 10 * 30, rng), resample=Image.BICUBIC, fillcolor=_FILL),
    "PosterizeIncreasing": lambda img, m, rng: ImageOps.posterize(img, max(1, 4 - int(m / 10 * 4))),
    "SolarizeIncreasing": lambda img, m, rng: ImageOps.solarize(img, 256 - int(m / 10 * 256)),
    "SolarizeAdd": lambda img, m, rng: _solarize_add(img, int(m / 10 * 110)),
    "ColorIncreasing": lambda img, m, rng: ImageEnhance.Color(img).enhance(1 + _signed(m / 10 * 0.9, rng)),
    "ContrastIncreasing": lambda img, m, rng: ImageEnhance.Contrast(img).enhance(1 + _signed(m / 10 * 0.9, rng)),
    "BrightnessIncreasing": lambda img, m, rng: ImageEnhance.Brightness(img).enhance(1 + _signed(m / 10 * 0.9, rng)),
    "SharpnessIncreasing": lambda img, m, rng: ImageEnhance.Sharpness(img).enhance(1 + _signed(m / 10 * 0.9, rng)),
    "ShearX": lambda img, m, rng: _affine(img, (1, _signed(m / 10 * 0.3, rng), 0, 0, 1, 0)),
    "ShearY": lambda img, m, rng: _affine(img, (1, 0, 0, _signed(m / 10 * 0.3, rng), 1, 0)),
    "TranslateXRel": lambda img, m, rng: _affine(img, (1, 0, _signed(m / 10 * 0.45, rng) * img.size[0], 0, 1, 0)),
    "TranslateYRel": lambda img, m, rng: _affine(img, (1, 0, 0, 0, 1, _signed(m / 10 * 0.45, rng) * img.size[1])),
}


def _solarize_add(img, add: int, threshold: int = 128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def rand_augment(img: Image.Image, rng: np.random.Generator, n: int = 2, m: float = 9, std: float = 0.5,
                 p: float = 0.5) -> Image.Image:
    names = list(RAND_AUGMENT_OPS)
    for k in rng.choice(len(names), size=n, replace=True):
        if rng.random() < p:
            level = float(np.clip(rng.normal(m, std), 0, 10))
            img = RAND_AUGMENT_OPS[names[k]](img, level, rng)
    return img


def random_resized_crop(img: Image.Image, size: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    W, H = img.size
    area = W * H
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            break
    else:  # fall back to a central crop within the ratio bounds
        in_ratio = W / H
        w, h = (W, int(round(W / min(ratio)))) if in_ratio < min(ratio) else \
               (int(round(H * max(ratio))), H) if in_ratio > max(ratio) else (W, H)
        top, left = (H - h) // 2, (W - w) // 2
    return img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def random_erasing(x_CHW: torch.Tensor, rng, p: float = 0.25, area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3))):
    if rng.random() >= p:
        return x_CHW
    C, H, W = x_CHW.shape
    for _ in range(10):
        target = H * W * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w < W and h < H:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            x_CHW[:, top:top + h, left:left + w] = torch.from_numpy(rng.standard_normal((C, h, w)).astype(np.float32))
            break
    return x_CHW


class ImageClassifyTask(AnswerSetTask):
    name = "image_classify"
    default_splits = {"train": "finetune/imagenet/train.tsv", "valid": "finetune/imagenet/valid.tsv",
                      "test": "finetune/imagenet/test.tsv"}
    metric = "accuracy"
    selected_cols = "0,2"
    prompt_type = "none"
    Options = ImageClassifyOptions
    _ofa_augment = RandomAugment(2, 7)

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        path = self.resolve(self.options.class2label, "task.options.class2label")
        self.answer_set = AnswerSet(load_answer_list(path), vocab, max_tokens=cfg.data.max_tgt_length)
        o = self.options
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if o.imagenet_mean_std else ((0.5,) * 3, (0.5,) * 3)
        self.epoch = 0  # the training loader's epoch, for the per-sample augmentation seed

    def train_image(self, tsv, i: int, b64: str) -> torch.Tensor:
        rng = np.random.default_rng([self.cfg.train.seed, 1000, self.epoch, i])
        img = decode_base64_image(b64, file=tsv.path, row=i, field="image").convert("RGB")
        img = random_resized_crop(img, self.cfg.data.patch_image_size, rng)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = self._ofa_augment(rand_augment(img, rng), rng)
        return random_erasing(to_tensor(img, self.mean, self.std), rng)

    def build_sample(self, split: str, i: int):
        tsv = self.tsv(split)
        image_b64, name = tsv.row(i)
        name = name.strip()
        if not name:
            raise BadRow(str(tsv.path), i, "class name", "empty text")
        if split == "train" and self.options.train_augment:
            image = self.train_image(tsv, i, image_b64)
        else:
            image = square_image(tsv, i, image_b64, self.cfg.data.patch_image_size, self.mean, self.std)
        src = self.vocab.encode_line(PROMPT_CAPTION)
        return self.prompted_sample(i, src, name, tsv=tsv, row=i, field="class name", image=image, conf=1.0,
                                    ref={name: 1.0}, split=split)

    def build_train_loader(self, *, rank, world_size, seed):
        loader = super().build_train_loader(rank=rank, world_size=world_size, seed=seed)
        loader.on_batch = lambda: setattr(self, "epoch", loader.cursor.epoch)
        return loader
