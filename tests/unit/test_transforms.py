"""Image/box transforms of OFA pretraining (spec §2.5, §3.4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_ds.data import transforms as T


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(w: int, h: int, color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def test_quantize_matches_spec_example_and_rounds_half_to_even():
    # spec §9: box (0.1, 0.2, 0.5, 0.9) of the 512 canvas -> bins (100, 200, 500, 899)
    box = torch.tensor([0.1, 0.2, 0.5, 0.9]) * 512
    assert T.quantize(box, 512, 1000).tolist() == [100, 200, 500, 899]
    # v·999 = 0.5 and 2.5 round to 0 and 2 (half to even)
    halves = torch.tensor([0.5, 2.5], dtype=torch.float64) / 999 * 512
    assert T.quantize(halves, 512, 1000).tolist() == [0, 2]


def test_shorter_side_resize_and_clamp():
    assert T.shorter_side_size(640, 480, 384, 672) == (512, 384)
    assert T.shorter_side_size(300, 1200, 480, 672) == (480, 672)  # clamp breaks the aspect ratio
    for seed in range(5):
        img, boxes = T.random_resize(_image(640, 480), list(range(384, 481)), 672, _rng(seed),
                                     torch.tensor([[64.0, 48.0, 320.0, 240.0]]))
        s = img.height
        assert 384 <= s <= 480 and img.width == min(int(s * 640 / 480), 672)
        assert torch.allclose(boxes, torch.tensor([[64.0, 48.0, 320.0, 240.0]]) * s / 480, atol=0.5)


def test_object_center_crop_keeps_the_box_inside():
    img = _image(600, 500)
    img, box = T.object_center_crop(img, torch.tensor([500.0, 10.0, 590.0, 60.0]), 384)
    assert img.size == (384, 384)
    # left = max(cx - 192 + min(600 - cx - 192, 0), 0) = 216 ; top = 0
    assert torch.allclose(box, torch.tensor([284.0, 10.0, 374.0, 60.0]))


def test_hflip_mirrors_boxes():
    img, boxes = T.hflip(_image(100, 50), torch.tensor([[10.0, 5.0, 30.0, 25.0]]))
    assert boxes.tolist() == [[70.0, 5.0, 90.0, 25.0]]


def test_large_scale_jitter_output_and_box_clipping():
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    img.paste((255, 0, 0), (100, 50, 160, 110))
    boxes = torch.tensor([[100.0, 50.0, 160.0, 110.0], [0.0, 0.0, 1.0, 1.0]])
    for seed in range(10):
        out, b, keep = T.large_scale_jitter(img, boxes, 128, _rng(seed))
        assert out.size == (128, 128)
        assert len(b) == int(keep.sum()) and (b >= 0).all() and (b <= 128).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    with pytest.raises(ValueError):
        T.large_scale_jitter(img, boxes, 128, _rng(), scale_range=(0.5, 1.5))


def test_random_augment_is_reproducible_and_keeps_size():
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    aug = T.RandomAugment(2, 7)
    a = np.asarray(aug(base, _rng(3)))
    b = np.asarray(aug(base, _rng(3)))
    assert a.shape == (48, 64, 3) and (a == b).all()
    for name, op in T.AUGMENT_OPS.items():
        out = op(base, 7, -1.0)
        assert out.size == base.size and out.mode == "RGB", name
    with pytest.raises(ValueError):
        T.RandomAugment(ops=["Solarize"])


def test_autocontrast_is_correct_not_upstreams_wraparound():
    # A channel whose minimum is above 0 must be stretched, not turned white (spec §10.13).
    img = Image.fromarray(np.array([[[100, 50, 50], [200, 150, 150]]], dtype=np.uint8))
    out = np.asarray(T.AUGMENT_OPS["AutoContrast"](img, 7, 1.0))
    assert out[0, 0].tolist() == [0, 0, 0] and (out[0, 1] >= 254).all()  # PIL's LUT truncates


def test_to_tensor_normalises_to_minus_one_one_and_masks_centre():
    x = T.to_tensor(Image.fromarray(np.array([[[0, 255, 128]]], dtype=np.uint8)))
    assert torch.allclose(x[:, 0, 0], torch.tensor([-1.0, 1.0, 128 / 255 * 2 - 1]), atol=1e-6)
    img = T.mask_center(torch.ones(3, 256, 256), 128)
    assert img[:, 64:192, 64:192].abs().sum() == 0 and img.sum() == 3 * (256 * 256 - 128 * 128)


def test_check_box_reasons():
    assert T.check_box([0, 0, 10, 10], 10, 10) is None
    assert T.check_box([0, 0, 11, 10], 10, 10)[0] == "box outside image"
    assert T.check_box([5, 0, 5, 10], 10, 10)[0] == "empty box"


def test_one_step_resize_and_crop_equal_the_two_step_transforms():
    # Same pixels up to float rounding of the sub-pixel box (a few levels on pure noise).
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    scales = list(range(384, 481))
    box = torch.tensor([200.0, 20.0, 310.0, 90.0])
    for seed in range(4):
        fast = T.random_resize_center_crop(img, scales, 672, 384, _rng(seed))
        slow = T.center_crop(T.random_resize(img, scales, 672, _rng(seed))[0], 384)
        diff = np.abs(np.asarray(fast, dtype=int) - np.asarray(slow, dtype=int))
        assert fast.size == (384, 384) and diff.max() <= 2 and (diff > 0).mean() < 0.01

        fast_img, fast_box = T.random_resize_object_crop(img, box, scales, 672, 384, _rng(seed))
        resized, boxes = T.random_resize(img, scales, 672, _rng(seed), box[None])
        slow_img, slow_box = T.object_center_crop(resized, boxes[0], 384)
        diff = np.abs(np.asarray(fast_img, dtype=int) - np.asarray(slow_img, dtype=int))
        assert torch.allclose(fast_box, slow_box) and diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_fast_to_tensor_is_bitwise_torchvision():
    rng = np.random.default_rng(1)
    for shape in [(384, 384, 3), (37, 53, 3)]:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        assert torch.equal(T.to_tensor(img), T.to_tensor_reference(img))
        imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert torch.equal(T.to_tensor(img, *imagenet), T.to_tensor_reference(img, *imagenet))
    assert T.to_tensor(img).is_contiguous()


def test_whole_pixel_translate_is_bitwise_the_affine_warp():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    for dx, dy in [(7.0, 0), (-7.0, 0), (0, 7.0), (0, -7.0), (2.5, 0)]:
        warp = T._affine(img, (1, 0, dx, 0, 1, dy))
        assert np.array_equal(np.asarray(T._translate(img, dx, dy)), np.asarray(warp)), (dx, dy)
