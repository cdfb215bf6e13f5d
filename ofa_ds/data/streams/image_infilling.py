"""Image-infilling stream: predict the VQ codes of an image's masked centre (spec §3.6).

Row fields (``selected_cols=0,1,2``): ``image_id, image (base64, already 2C×2C = 256×256),
code`` where ``code`` holds (C/8)² = 256 space-separated code ids of the central C×C region in
raster order. The centre of the input image is zeroed; the target is those codes as
``<code_i>`` tokens. Images of another size are bad rows: upstream never resizes here.
"""
from __future__ import annotations

import numpy as np
import torch

from ofa_ds.data import transforms as T
from ofa_ds.data.streams.common import EXTRAS_CONF, PROMPT_IMAGE_INFILLING, Sample, check_columns, seq2seq
from ofa_ds.data.tsv import BadRow, decode_base64_image


class ImageInfillingStream:
    name = "image"

    def __init__(self, tsv, vocab, *, code_image_size: int = 128):
        check_columns(tsv, ("image_id", "image", "code"), "image")
        self.tsv, self.vocab = tsv, vocab
        self.code_image_size = code_image_size
        self.image_size = 2 * code_image_size
        self.num_codes = (code_image_size // 8) ** 2
        self.code_offset, self.codebook_size = vocab.code_offset, vocab.code_dict_size
        self.prompt = vocab.encode(PROMPT_IMAGE_INFILLING)

    def __len__(self) -> int:
        return len(self.tsv)

    def samples(self, index: int, rng: np.random.Generator) -> list[Sample]:
        return [self.sample(index, rng)]

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        image_id, image_b64, code = self.tsv.row(index)
        try:
            codes = np.array(code.split(), dtype=np.int64)
        except ValueError:
            raise BadRow(self.tsv.path, index, "code", "bad codes", "not integers") from None
        if len(codes) != self.num_codes:
            raise BadRow(self.tsv.path, index, "code", "bad codes", f"expected {self.num_codes}, got {len(codes)}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise BadRow(self.tsv.path, index, "code", "bad codes", f"ids must lie in [0, {self.codebook_size})")
        image = decode_base64_image(image_b64, file=self.tsv.path, row=index, field="image")
        if image.size != (self.image_size, self.image_size):
            raise BadRow(self.tsv.path, index, "image", "wrong image size",
                         f"{image.width}x{image.height}, expected {self.image_size}x{self.image_size}")
        pixels = T.mask_center(T.to_tensor(image), self.code_image_size)
        target = (torch.from_numpy(codes) + self.code_offset).tolist()
        return seq2seq(self.vocab, image_id, self.prompt, target, pixels,
                       patch_mask=True, code_mask=True, conf=EXTRAS_CONF)
