"""VQ-GAN codes for OFA's image streams (``ofa-ds prepare image-codes``).

* ``infilling`` → ``image-infilling`` rows: each image resized (shorter side, LANCZOS) and
  centre-cropped to 256×256, stored as JPEG (quality 95), with the codes of its central 128×128
  crop: 16×16 = 256 ids in raster order (spec §3.6; the layout OFA's image stream reads).
* ``text-to-image`` → ``image-gen`` rows: the 256×256 image's 32×32 = 1024 codes and the
  lowercased caption (spec §5.5), from a captions table as for ``prepare image-text``.

Images come from a folder (``images_root``; text-to-image: with a captions table) or from an
ofa-ds TSV that already holds them (``from_tsv`` + its format, e.g. OFA's released
vision-language or caption files; the caption is the format's first non-empty text column).

Images are batched through the VQ-GAN (``ofa_ds.vqgan``) in this process, on CUDA when present.
The model must be OFA's (gumbel_f8, f = 8) for these code counts; ``random_init`` is for smoke
tests only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ofa_ds.data.bad_rows import BadRow
from preprocessing.engine import Converter
from preprocessing.images import decode, read_file, save, to_b64
from ofa_ds.data.tsv import decode_base64_image
from preprocessing.formats import get_format
from preprocessing.sources.common import pick, read_table, table_record, text_or_bad
from preprocessing.sources.image_text import IMAGE_KEYS, TEXT_KEYS
from preprocessing.sources.imagenet import IMAGE_SUFFIXES

IMAGE_SIZE = 256
CENTRE = 128


def square(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Shorter side to ``size`` (LANCZOS), then the central size×size crop."""
    img = img.convert("RGB")
    s = size / min(img.size)
    w, h = max(size, round(img.width * s)), max(size, round(img.height * s))
    img = img.resize((w, h), Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


class ImageCodes(Converter):
    kind = "image-codes"
    in_process = True  # one model on one device; the engine does not fork workers for it

    def __init__(self, *, task: str = "infilling", images_root=None, captions=None, from_tsv=None,
                 tsv_format: str | None = None, checkpoint=None, flavor=None, random_init: bool = False,
                 trust_checkpoint: bool = False, batch_size: int = 16, device: str | None = None,
                 image_key=None, text_key=None):
        if task not in ("infilling", "text-to-image"):
            raise ValueError(f"task must be infilling or text-to-image, got {task!r}")
        if (images_root is None) == (from_tsv is None):
            raise ValueError("give either --images (a folder) or --from-tsv (an ofa-ds TSV with images)")
        if task == "text-to-image" and images_root is not None and not captions:
            raise ValueError("text-to-image from a folder needs --captions (image name + caption per row)")
        if not checkpoint and not random_init:
            raise ValueError("pass --checkpoint (a taming-transformers VQ-GAN), or --random-init for a smoke test")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.task = task
        self.format = "image-infilling" if task == "infilling" else "image-gen"
        self.images_root = Path(images_root) if images_root is not None else None
        if self.images_root is not None and not self.images_root.is_dir():
            raise ValueError(f"{self.images_root} is not a folder")
        self.tsv = self.tsv_format = None
        if from_tsv is not None:
            from ofa_ds.data.tsv import TSVFile
            self.tsv_format = get_format(tsv_format or "")
            if self.tsv_format.image is None:
                raise ValueError(f"format {self.tsv_format.name} has no image column")
            self.tsv = TSVFile(from_tsv, num_columns=self.tsv_format.num_columns)
        self.captions = Path(captions) if captions else None
        self.checkpoint, self.flavor, self.random_init = checkpoint, flavor, random_init
        self.trust_checkpoint, self.batch_size = trust_checkpoint, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.image_keys = (image_key,) if image_key else IMAGE_KEYS
        self.text_keys = (text_key,) if text_key else TEXT_KEYS
        self._model = None

    def settings(self):
        return {"task": self.task, "images_root": str(self.images_root), "captions": str(self.captions),
                "from_tsv": str(self.tsv.path) if self.tsv else None,
                "checkpoint": str(self.checkpoint), "flavor": self.flavor, "random_init": self.random_init}

    @property
    def model(self):
        if self._model is None:
            from ofa_ds.vqgan import VQGAN
            if self.checkpoint:
                model = VQGAN.from_checkpoint(self.checkpoint, self.flavor, trust_pickle=self.trust_checkpoint)
            else:
                torch.manual_seed(0)
                model = VQGAN.from_flavor(self.flavor or "gumbel_f8")
            if model.config.factor != 8:
                raise ValueError(f"OFA's code layouts need an f=8 VQ-GAN, got f={model.config.factor}")
            self._model = model.to(self.device).eval()
        return self._model

    def records(self):
        if self.tsv is not None:
            yield from (("tsv", i) for i in range(len(self.tsv)))
        elif self.task == "infilling":
            for path in sorted(p for p in self.images_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                yield "file", str(path.relative_to(self.images_root))
        else:
            yield from (("table", item) for item in read_table(self.captions))

    def _load(self, record) -> tuple[str, Image.Image, str | None]:
        """(uniq_id, 256x256 image, lowercased caption or None) of one record."""
        source, item = record
        if source == "file":
            path = self.images_root / item
            return Path(item).with_suffix("").as_posix(), square(decode(read_file(path), where=path)), None
        if source == "tsv":
            fields = dict(zip(self.tsv_format.columns, self.tsv.row(item)))
            where = f"{self.tsv.path}:{item + 1}"
            image = decode_base64_image(fields[self.tsv_format.image], file=self.tsv.path, row=item, field="image")
            caption = next((fields[c] for c in self.tsv_format.text if fields.get(c, "").strip()), None)
            if self.task == "text-to-image":
                caption = text_or_bad(caption, where, "caption").lower()
            return fields[self.tsv_format.columns[0]], square(image), caption
        where, row = table_record(self.captions, item)
        rel = pick(row, self.image_keys)
        if rel is None:
            raise BadRow(where, None, "image", "no image name", f"none of the columns {self.image_keys}")
        caption = text_or_bad(pick(row, self.text_keys), where, "caption").lower()
        path = self.images_root / str(rel)
        return row.get("id") or Path(str(rel)).stem, square(decode(read_file(path), where=path)), caption

    def convert_chunk(self, records, emit, bad):
        ready = []
        for rec in records:
            try:
                ready.append(self._load(rec))
            except BadRow as err:
                bad(err)
        for start in range(0, len(ready), self.batch_size):
            batch = ready[start:start + self.batch_size]
            pixels = torch.stack([to_tensor(img) for _, img, _ in batch])
            if self.task == "infilling":
                lo = (IMAGE_SIZE - CENTRE) // 2
                pixels = pixels[:, :, lo:lo + CENTRE, lo:lo + CENTRE]
            codes = self.model.encode(pixels).flatten(1).cpu().tolist()
            for (uid, img, caption), c in zip(batch, codes):
                text = " ".join(map(str, c))
                if self.task == "infilling":
                    emit([[uid, to_b64(save(img, "JPEG", 95)), text]])
                else:
                    emit([[uid, text, caption]])

    def __getstate__(self):
        return {**self.__dict__, "_model": None}


__all__ = ["ImageCodes", "square"]
