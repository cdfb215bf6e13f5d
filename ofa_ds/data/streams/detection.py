"""Detection stream: list every object as 4 coordinate bins + its category (spec §3.7).

Row fields (``selected_cols=0,1,2``): ``image_id, image (base64), label`` where ``label`` joins
objects with ``&&``, each ``x0,y0,x1,y1,cat_id,cat_name`` in original pixels (split on the
first five commas only, so names may contain commas; ``cat_id`` is ignored).

Transform: random horizontal flip, LargeScaleJitter to 256×256, boxes divided by
``max_image_size`` (512) and quantised. Objects stay in TSV order, with no cap on their number,
and ones cropped away are dropped; if none is left the target is just ``[eos]``. A box that lies
outside the original image makes the whole row bad (it would otherwise be silently clipped).
"""
from __future__ import annotations

import numpy as np
import torch

from ofa_ds.data import transforms as T
from ofa_ds.data.streams.common import EXTRAS_CONF, PROMPT_DETECTION, Sample, check_columns, seq2seq
from ofa_ds.data.tsv import BadRow, decode_base64_image


class DetectionStream:
    name = "detection"

    def __init__(self, tsv, vocab, *, image_size: int = 256, max_image_size: int = 512,
                 num_bins: int = 1000, scale_range: tuple[float, float] = (1.0, 1.5)):
        check_columns(tsv, ("image_id", "image", "label"), "detection")
        self.tsv, self.vocab = tsv, vocab
        self.image_size, self.max_image_size, self.num_bins = image_size, max_image_size, num_bins
        self.scale_range = scale_range
        self.prompt = vocab.encode(PROMPT_DETECTION)
        self.bin_offset = vocab.bin_offset
        self._names: dict[str, list[int]] = {}  # category name -> tokens of " name"

    def __len__(self) -> int:
        return len(self.tsv)

    def _parse(self, index: int, label: str, width: int, height: int):
        boxes, names = [], []
        for item in label.strip().split("&&"):
            parts = item.split(",", 5)
            try:
                box = [float(v) for v in parts[:4]]
            except ValueError:
                box = []
            if len(parts) != 6 or len(box) != 4 or not parts[5].strip():
                raise BadRow(self.tsv.path, index, "label", "bad object", f"{item!r} is not 'x0,y0,x1,y1,cat_id,cat_name'")
            why = T.check_box(box, width, height)
            if why:
                raise BadRow(self.tsv.path, index, "label", *why)
            boxes.append(box)
            names.append(parts[5])
        return torch.tensor(boxes, dtype=torch.float32), names

    def _name_tokens(self, name: str) -> list[int]:
        if name not in self._names:
            self._names[name] = self.vocab.encode(" " + name)  # category case kept
        return self._names[name]

    def samples(self, index: int, rng: np.random.Generator) -> list[Sample]:
        return [self.sample(index, rng)]

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        image_id, image_b64, label = self.tsv.row(index)
        if not label.strip():
            raise BadRow(self.tsv.path, index, "label", "no objects")
        image = decode_base64_image(image_b64, file=self.tsv.path, row=index, field="image")
        boxes, names = self._parse(index, label, image.width, image.height)

        image, boxes = T.random_hflip(image, boxes, rng)
        image, boxes, kept = T.large_scale_jitter(image, boxes, self.image_size, rng, self.scale_range)
        bins = T.quantize(boxes, self.max_image_size, self.num_bins) + self.bin_offset  # [N, 4]
        target: list[int] = []
        for box_bins, name in zip(bins.tolist(), (n for n, k in zip(names, kept.tolist()) if k)):
            target += box_bins + self._name_tokens(name)
        return seq2seq(self.vocab, image_id, self.prompt, target, T.to_tensor(image),
                       patch_mask=True, code_mask=False, conf=EXTRAS_CONF)
