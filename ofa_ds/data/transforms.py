"""Image and box transforms of OFA pretraining (spec §3.4, §2.5), written on PIL/torchvision.

Every random transform takes an explicit ``numpy.random.Generator``. The caller makes one
generator per sample from (seed, stream, epoch, global index), so a sample's augmentation is
reproducible on its own, independent of worker count and of which samples came before it.
This deliberately differs from upstream OFA, which reseeds NumPy with (seed, epoch) on every
item (so every image of an epoch gets the same RandomAugment ops) and leaves Python/torch RNGs
unseeded (spec §3.9, §10.2).

Other deviations, all deliberate:

* AutoContrast is PIL's correct ``ImageOps.autocontrast``; upstream's uint8 wrap-around bug
  (spec §10.13) is not reproduced.
* Geometric RandomAugment ops use PIL's affine warp with bilinear sampling and grey (128) fill,
  where upstream uses OpenCV. Same parameters, slightly different interpolation at edges.
* Resize-then-crop runs as one PIL resample of just the kept window (:func:`resized_crop`),
  which matches the two-step result up to a level or two of rounding in rare pixels.

Boxes are float tensors ``[N, 4]`` of ``x0, y0, x1, y1`` in pixels of the current image.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import functional as TF

# OFA pretraining normalises to [-1, 1] (spec §1.3 of the model spec).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
GREY = (128, 128, 128)

# The fast paths below (to_tensor, whole-pixel translation) give bitwise the same images as
# the straightforward code they replace; ``use_fast_paths(False)`` restores that code, for the
# parity tests and the before/after timing of ``ofa-ds bench data --vl-stages``.
FAST_PATHS = True


def use_fast_paths(enabled: bool) -> None:
    global FAST_PATHS
    FAST_PATHS = bool(enabled)


# ---------------------------------------------------------------------------------------------
# Resizing and cropping


def shorter_side_size(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(new_w, new_h) with the shorter side ``size``, the other scaled alike, each side then
    clamped to ``max_size`` (the clamp may break the aspect ratio, as upstream's does)."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if max_size is not None:
        new_w, new_h = min(new_w, max_size), min(new_h, max_size)
    return new_w, new_h


def resize(img: Image.Image, new_w: int, new_h: int, boxes: torch.Tensor | None = None):
    """Bicubic PIL resize (pixel parity with upstream needs PIL bicubic, spec §10.14);
    boxes are scaled by the per-axis ratio."""
    ratio_w, ratio_h = new_w / img.width, new_h / img.height
    img = img.resize((new_w, new_h), Image.BICUBIC)
    if boxes is not None:
        boxes = boxes * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    return img, boxes


def resized_crop(img: Image.Image, new_w: int, new_h: int, left: int, top: int, size: int) -> Image.Image:
    """``resize(img, new_w×new_h)`` then crop ``size``×``size`` at (left, top), computing only the
    kept pixels: PIL's ``resize(box=...)`` takes the filter support from the whole source image,
    so the result equals resize-then-crop (up to rare rounding by a level or two) at a fraction of
    the cost.
    Crops reaching outside the resized image fall back to the two steps (PIL pads with black)."""
    if left < 0 or top < 0 or left + size > new_w or top + size > new_h:
        return img.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size, top + size))
    sx, sy = img.width / new_w, img.height / new_h
    return img.resize((size, size), Image.BICUBIC,
                      box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def random_resize_size(img: Image.Image, scales: Sequence[int], max_size: int, rng: np.random.Generator):
    """OFA's RandomResize target (new_w, new_h): shorter side to a uniformly drawn scale, sides
    clamped to max_size."""
    size = int(scales[int(rng.integers(len(scales)))])
    return shorter_side_size(img.width, img.height, size, max_size)


def random_resize(img: Image.Image, scales: Sequence[int], max_size: int, rng: np.random.Generator,
                  boxes: torch.Tensor | None = None):
    """OFA's RandomResize of the image (and boxes)."""
    return resize(img, *random_resize_size(img, scales, max_size, rng), boxes)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop (pads with black if the image is smaller than ``size``)."""
    return TF.center_crop(img, [size, size])


def random_resize_center_crop(img: Image.Image, scales: Sequence[int], max_size: int, size: int,
                              rng: np.random.Generator) -> Image.Image:
    """RandomResize followed by CenterCrop(size), as one resampling (see :func:`resized_crop`)."""
    new_w, new_h = random_resize_size(img, scales, max_size, rng)
    # torchvision's CenterCrop offsets
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if left < 0 or top < 0:
        return center_crop(img.resize((new_w, new_h), Image.BICUBIC), size)
    return resized_crop(img, new_w, new_h, left, top, size)


def object_center_offset(box: torch.Tensor, width: int, height: int, size: int) -> tuple[float, float]:
    """(left, top) of ObjectCenterCrop: a size×size window centred on the box, pushed inside
    the image (spec §3.4)."""
    x0, y0, x1, y1 = box.tolist()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = max(cx - size / 2 + min(width - cx - size / 2, 0), 0)
    top = max(cy - size / 2 + min(height - cy - size / 2, 0), 0)
    return left, top


def shift_clip(boxes: torch.Tensor, left: float, top: float, size: int) -> torch.Tensor:
    return (boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)).clamp(0, size)


def object_center_crop(img: Image.Image, box: torch.Tensor, size: int):
    """ObjectCenterCrop. The crop offset is rounded for the pixels (as PIL does) but the box is
    shifted by the exact float offset, then clipped to the crop; the box is never dropped."""
    left, top = object_center_offset(box, img.width, img.height, size)
    img = img.crop((round(left), round(top), round(left) + size, round(top) + size))
    return img, shift_clip(box, left, top, size)


def random_resize_object_crop(img: Image.Image, box: torch.Tensor, scales: Sequence[int], max_size: int,
                              size: int, rng: np.random.Generator):
    """RandomResize (image and box) then ObjectCenterCrop, as one resampling."""
    new_w, new_h = random_resize_size(img, scales, max_size, rng)
    box = box * torch.tensor([new_w / img.width, new_h / img.height] * 2, dtype=box.dtype)
    left, top = object_center_offset(box, new_w, new_h, size)
    return resized_crop(img, new_w, new_h, round(left), round(top), size), shift_clip(box, left, top, size)


def hflip(img: Image.Image, boxes: torch.Tensor):
    """Mirror the image and its boxes: x0' = W − x1, x1' = W − x0."""
    w = img.width
    boxes = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([w, 0.0, w, 0.0])
    return img.transpose(Image.FLIP_LEFT_RIGHT), boxes


def random_hflip(img: Image.Image, boxes: torch.Tensor, rng: np.random.Generator, p: float = 0.5):
    return hflip(img, boxes) if rng.random() < p else (img, boxes)


def large_scale_jitter(img: Image.Image, boxes: torch.Tensor, size: int, rng: np.random.Generator,
                       scale_range: tuple[float, float] = (1.0, 1.5)):
    """LargeScaleJitter to ``size``×``size`` (spec §3.4): upscale so the shorter side is
    round(r·size) with r ~ U[scale_range), random crop, clip boxes, drop empty boxes.

    With scale_range ≥ 1 the image always covers the crop, so upstream's padding branch is
    not needed; a smaller lower bound is rejected.
    """
    if scale_range[0] < 1.0:
        raise ValueError(f"large_scale_jitter needs scale_range >= 1.0, got {scale_range}")
    target = round(rng.uniform(*scale_range) * size)
    factor = max(target / img.height, target / img.width)
    new_h, new_w = round(img.height * factor), round(img.width * factor)
    boxes = boxes * torch.tensor([new_w / img.width, new_h / img.height] * 2, dtype=boxes.dtype)
    top, left = (np.floor(np.array([new_h - size, new_w - size]) * rng.random(2))).astype(int).tolist()
    img = resized_crop(img, new_w, new_h, left, top, size)
    boxes = shift_clip(boxes, left, top, size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return img, boxes[keep], keep


# ---------------------------------------------------------------------------------------------
# RandomAugment(N, M) on PIL images (spec §3.4 op table)

MAX_LEVEL = 10.0


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # PIL's affine takes the output->input map; the op's sign is random, so the direction
    # of the map does not change the distribution.
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=GREY)


def _enhance_factor(level: float) -> float:
    return (level / MAX_LEVEL) * 1.8 + 0.1


def _op_identity(img, level, sign):
    return img


def _op_autocontrast(img, level, sign):
    return ImageOps.autocontrast(img)


def _op_equalize(img, level, sign):
    return ImageOps.equalize(img)


def _op_brightness(img, level, sign):
    return ImageEnhance.Brightness(img).enhance(_enhance_factor(level))


def _op_sharpness(img, level, sign):
    # PIL blends the 3x3 SMOOTH-filtered image (kernel 1,1,1/1,5,1/1,1,1 over 13, borders kept)
    # with the original by the factor, which is exactly upstream's sharpness op.
    return ImageEnhance.Sharpness(img).enhance(_enhance_factor(level))


def _op_shear_x(img, level, sign):
    return _affine(img, (1, sign * level / MAX_LEVEL * 0.3, 0, 0, 1, 0))


def _op_shear_y(img, level, sign):
    return _affine(img, (1, 0, 0, sign * level / MAX_LEVEL * 0.3, 1, 0))


def _translate(img: Image.Image, dx: float, dy: float) -> Image.Image:
    """The affine warp by (dx, dy); a whole-pixel shift is a paste onto grey, which is
    bitwise what the bilinear warp gives at integer offsets (tested) at a fraction of its cost."""
    if not FAST_PATHS or dx != int(dx) or dy != int(dy):
        return _affine(img, (1, 0, dx, 0, 1, dy))
    out = Image.new(img.mode, img.size, GREY)
    out.paste(img, (-int(dx), -int(dy)))
    return out


def _op_translate_x(img, level, sign):
    return _translate(img, sign * level / MAX_LEVEL * 10.0, 0)


def _op_translate_y(img, level, sign):
    return _translate(img, 0, sign * level / MAX_LEVEL * 10.0)


def _op_rotate(img, level, sign):
    return img.rotate(sign * level / MAX_LEVEL * 30.0, resample=Image.BILINEAR, fillcolor=GREY)


AUGMENT_OPS: dict[str, Callable[[Image.Image, float, float], Image.Image]] = {
    "Identity": _op_identity,
    "AutoContrast": _op_autocontrast,
    "Equalize": _op_equalize,
    "Brightness": _op_brightness,
    "Sharpness": _op_sharpness,
    "ShearX": _op_shear_x,
    "ShearY": _op_shear_y,
    "TranslateX": _op_translate_x,
    "TranslateY": _op_translate_y,
    "Rotate": _op_rotate,
}


class RandomAugment:
    """Draw ``n`` ops with replacement; apply each with probability ``p`` at level ``magnitude``."""

    def __init__(self, n: int = 2, magnitude: float = 7, ops: Sequence[str] = tuple(AUGMENT_OPS), p: float = 0.5):
        unknown = [op for op in ops if op not in AUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandomAugment ops {unknown}; known: {list(AUGMENT_OPS)}")
        self.n, self.magnitude, self.ops, self.p = n, magnitude, list(ops), p

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for op_index in rng.integers(len(self.ops), size=self.n):
            apply, sign = rng.random() < self.p, (-1.0 if rng.random() < 0.5 else 1.0)
            if apply:
                img = AUGMENT_OPS[self.ops[op_index]](img, self.magnitude, sign)
        return img


# ---------------------------------------------------------------------------------------------
# Tensors, masks and bins


def to_tensor_reference(img: Image.Image, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """torchvision's ToTensor + Normalize, literally."""
    return TF.normalize(TF.pil_to_tensor(img).float().div_(255.0), list(mean), list(std))


def to_tensor(img: Image.Image, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 PIL RGB -> normalised float [3, H, W] (ToTensor + Normalize).

    The same float32 operations in the same order as torchvision's ``pil_to_tensor().float()
    .div(255)`` + ``normalize`` (so bitwise the same values), but converted straight into a
    contiguous CHW tensor and normalised in place: torchvision keeps the HWC strides through
    every step and clones for ``normalize``, which made this 2.5 ms of a 8 ms VL row."""
    if not FAST_PATHS:
        return to_tensor_reference(img, mean, std)
    hwc = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).view(img.height, img.width, -1)
    x = torch.empty(hwc.shape[2], img.height, img.width, dtype=torch.float32)
    x.copy_(hwc.permute(2, 0, 1)).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def mask_center(image_CHW: torch.Tensor, code_image_size: int) -> torch.Tensor:
    """Zero the central ``code_image_size`` square of a 2C×2C image (0 is mid-grey after
    normalisation), as the image-infilling stream does."""
    lo, hi = code_image_size // 2, code_image_size // 2 + code_image_size
    image_CHW[:, lo:hi, lo:hi] = 0
    return image_CHW


def quantize(coords: torch.Tensor, max_image_size: int, num_bins: int) -> torch.Tensor:
    """Pixel coordinates -> bin indices: round(v / max_image_size · (num_bins − 1)).

    The divisor is the fixed canvas ``max_image_size`` (512), not the image size, so a bin is
    an absolute pixel position (spec §2.5). ``torch.round`` rounds half to even like upstream.
    """
    return torch.round(coords / max_image_size * (num_bins - 1)).long()


def zero_image(size: int) -> torch.Tensor:
    """Placeholder for text-only samples (paired with ``patch_mask=False``)."""
    return torch.zeros(3, size, size)


def check_box(box: Sequence[float], width: int, height: int) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``box`` is not a non-empty box inside a width×height image,
    else None. The reason is a short category for bad-row counting."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        return "box not finite", f"box {list(box)}"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return "box outside image", f"box {list(box)} in a {width}x{height} image"
    if x1 <= x0 or y1 <= y0:
        return "empty box", f"box {list(box)} needs x0 < x1 and y0 < y1"
    return None
