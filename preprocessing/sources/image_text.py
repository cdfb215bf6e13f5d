"""Image-caption pairs → the pretraining ``vision-language`` stream (``type`` = caption).

Two sources:

* :class:`ImageFolderCaptions`: a folder of images plus a CSV / TSV (with header) or JSONL file
  naming each image (``image``/``file_name``/``file``/``path`` column, relative to the folder) and
  its caption (``caption``/``text``); an ``id`` column is used as uniq_id when present.
* :class:`WebDatasetIn`: webdataset ``.tar`` shards, each sample ``KEY.<jpg|jpeg|png|webp>`` plus
  ``KEY.txt`` or ``KEY.json`` (``caption``/``text``). Image members are read in place by offset.

:class:`WebDatasetOut` goes the other way: an ofa-ds TSV (any format with an image column) to
webdataset shards (``KEY.<ext>`` with the image bytes, ``KEY.json`` with the other columns and
``KEY.txt`` with the caption/text when the format has one).
"""
from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.engine import Converter
from preprocessing.formats import get_format
from preprocessing.images import encode_image, read_range
from preprocessing.sources.common import ImageConverter, pick, read_table, table_record, text_or_bad

IMAGE_KEYS = ("image", "file_name", "filename", "file", "path", "image_path")
TEXT_KEYS = ("caption", "text")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_STD_TO_URLSAFE = str.maketrans("+/", "-_")


def vl_caption_row(uid, img_b64: str, caption: str, dataset_name: str) -> list[str]:
    return [str(uid), img_b64, caption, "", "", "", dataset_name, "caption"]


class ImageFolderCaptions(ImageConverter):
    kind, format = "image-text", "vision-language"

    def __init__(self, captions, images_root, *, dataset_name: str = "", image_key=None, text_key=None, **kw):
        super().__init__(images_root, **kw)
        self.captions = Path(captions)
        self.dataset_name = dataset_name  # empty unless given (only "cc12m" changes OFA's targets)
        self.image_keys = (image_key,) if image_key else IMAGE_KEYS
        self.text_keys = (text_key,) if text_key else TEXT_KEYS
        list(zip(range(1), read_table(self.captions)))  # fail now on a missing file

    def settings(self):
        return {"captions": str(self.captions), "images_root": str(self.images_root),
                "dataset_name": self.dataset_name, "image_keys": self.image_keys, "text_keys": self.text_keys}

    def records(self):
        return read_table(self.captions)

    def rows(self, record):
        where, row = table_record(self.captions, record)
        rel = pick(row, self.image_keys)
        if rel is None:
            raise BadRow(where, None, "image", "no image name", f"none of the columns {self.image_keys}")
        caption = text_or_bad(pick(row, self.text_keys), where, "caption")
        img = self.load_image(self.image_path(str(rel)))
        uid = row.get("id") or Path(str(rel)).stem
        yield vl_caption_row(uid, img.b64, caption, self.dataset_name)


def tar_samples(path: Path):
    """(key, {ext: (offset, size)}) of every sample of a webdataset tar, in member order."""
    key, parts = None, {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            name = m.name.rsplit("/", 1)[-1]
            stem, dot, ext = name.partition(".")
            prefix = m.name[: len(m.name) - len(name)] + stem
            if prefix != key and key is not None:
                yield key, parts
                parts = {}
            key = prefix
            parts[ext.lower()] = (m.offset_data, m.size)
    if key is not None:
        yield key, parts


class WebDatasetIn(Converter):
    kind, format = "webdataset", "vision-language"

    def __init__(self, tars, *, dataset_name: str = "", image_options=None):
        from preprocessing.images import ImageOptions
        self.tars = [Path(t) for t in tars]
        missing = [str(t) for t in self.tars if not t.is_file()]
        if missing:
            raise ValueError(f"webdataset shard(s) not found: {missing}")
        self.dataset_name = dataset_name
        self.image_options = image_options or ImageOptions()

    def settings(self):
        return {"tars": [str(t) for t in self.tars], "dataset_name": self.dataset_name}

    def records(self):
        for tar in self.tars:
            for key, parts in tar_samples(tar):
                yield str(tar), key, parts

    def rows(self, record):
        tar, key, parts = record
        where = f"{tar} [{key}]"
        ext = next((e for e in IMAGE_EXTS if e in parts), None)
        if ext is None:
            raise BadRow(where, None, "image", "missing file", f"no {'/'.join(IMAGE_EXTS)} member")
        caption = None
        if "txt" in parts:
            caption = read_range(tar, *parts["txt"]).decode("utf-8", "replace")
        elif "json" in parts:
            try:
                meta = json.loads(read_range(tar, *parts["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRow(where, None, "json", "bad json", str(e)) from None
            caption = pick(meta, TEXT_KEYS) if isinstance(meta, dict) else None
        caption = text_or_bad(caption, where, "caption")
        img = encode_image(read_range(tar, *parts[ext]), self.image_options, where=where)
        yield vl_caption_row(key.rsplit("/", 1)[-1], img.b64, caption, self.dataset_name)


def _image_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


class WebDatasetOut(Converter):
    """Rows of an ofa-ds TSV → webdataset samples (the engine writes them as ``.tar`` shards)."""

    kind, writer = "to-webdataset", "webdataset"

    def __init__(self, tsv, source_format: str):
        from ofa_ds.data.tsv import TSVFile
        self.path = Path(tsv)
        self.source = get_format(source_format)
        if self.source.image is None:
            raise ValueError(f"format {source_format} has no image column")
        self.format = self.source.name
        self.tsv = TSVFile(self.path, num_columns=self.source.num_columns)

    def settings(self):
        return {"tsv": str(self.path), "source_format": self.source.name}

    def total(self):
        return len(self.tsv)

    def records(self):
        return iter(range(len(self.tsv)))

    def rows(self, i):
        fields = dict(zip(self.source.columns, self.tsv.row(i)))
        where = f"{self.path}:{i + 1}"
        try:
            b64 = fields.pop(self.source.image).strip()
            data = base64.urlsafe_b64decode(b64.translate(_STD_TO_URLSAFE) + "=" * (-len(b64) % 4))
        except ValueError as e:
            raise BadRow(where, None, "image", "invalid base64", str(e)) from None
        key = f"{i:09d}"
        sample = {_image_ext(data): data, "json": json.dumps(fields, ensure_ascii=False).encode("utf-8")}
        text = next((fields[c] for c in self.source.text if fields.get(c)), None)
        if text:
            sample["txt"] = text.encode("utf-8")
        yield key, sample
