"""Helpers shared by the source converters: images, boxes, safe pickles, streamed text files."""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Iterator

from ofa_ds.data.bad_rows import BadRow
from preprocessing.engine import Converter
from preprocessing.images import EncodedImage, ImageOptions, encode_image, read_file

# Annotations often overshoot the image by rounding (COCO's x + w = 640.01): up to this many
# pixels are clipped; anything further out is a bad box.
BOX_TOLERANCE = 1.0


class ImageConverter(Converter):
    """A converter whose rows carry a base64 image read from ``images_root``.

    Sources that also feed pretraining (captions, VQA, grounding) set ``vl_type`` and
    implement ``vision_language(row)``: with ``to="vision-language"`` their rows are written in
    the pretraining stream's layout instead of the finetuning task's.
    """

    vl_type: str | None = None
    finetune_format: str = ""

    def __init__(self, images_root=None, image_options: ImageOptions = ImageOptions(), *,
                 to: str | None = None, dataset_name: str = ""):
        self.images_root = Path(images_root) if images_root is not None else None
        self.image_options = image_options
        self.finetune_format = self.format
        if to not in (None, self.format, "vision-language") or (to == "vision-language" and not self.vl_type):
            raise ValueError(f"{self.kind} converts to {self.format}"
                             + (" or vision-language" if self.vl_type else "") + f", not {to}")
        self.to_vl = to == "vision-language"
        if self.to_vl:
            self.format = "vision-language"
        self.dataset_name = dataset_name or self.kind

    def out(self, row: list[str]) -> list[str]:
        """``row`` in the finetuning layout → the layout being written."""
        return self.vision_language(row) if self.to_vl else row

    def vision_language(self, row: list[str]) -> list[str]:
        raise NotImplementedError

    def image_path(self, relative: str) -> Path:
        if self.images_root is None:
            return Path(relative)
        return self.images_root / relative

    def load_image(self, path: Path) -> EncodedImage:
        return encode_image(read_file(path), self.image_options, where=path)


def fit_box(box, img: EncodedImage, where, field: str) -> list[float]:
    """``x0,y0,x1,y1`` in original pixels → checked, clipped within :data:`BOX_TOLERANCE`, scaled
    to the stored image. :class:`BadRow` ("box outside image", "empty box") otherwise."""
    from ofa_ds.data.transforms import check_box  # here: importing it pulls in torch (slow for plain kinds)

    w, h = img.source_width, img.source_height
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x0, y0) >= -BOX_TOLERANCE and x1 <= w + BOX_TOLERANCE and y1 <= h + BOX_TOLERANCE:
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    why = check_box([x0, y0, x1, y1], w, h)
    if why:
        raise BadRow(where, None, field, *why)
    return [x0 * img.scale_x, y0 * img.scale_y, x1 * img.scale_x, y1 * img.scale_y]


def box_text(box) -> str:
    return ",".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in box)


def xywh_to_xyxy(b) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


def load_json(path) -> object:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """Only builtin containers and scalars: any class or function reference is refused, so a
    hostile pickle cannot run code. (RefCOCO's refs(*).p and OFA's *.pkl are plain data.)"""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def load_plain_pickle(path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    with open(path, "rb") as f:
        try:
            # Python-2 pickles (the original refs files) hold byte strings: read them as UTF-8.
            return _PlainDataUnpickler(f, encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read as a plain-data pickle: {e}") from None


def read_table(path, *, where: str | None = None) -> Iterator[tuple[int, dict]]:
    """Rows of a ``.csv``/``.tsv`` (with header) or ``.jsonl`` file as dicts, streamed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, BadRow(path, i, None, "bad json", str(e))
                    continue
                yield i, obj if isinstance(obj, dict) else BadRow(path, i, None, "bad json", "not an object")
        return
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        for i, row in enumerate(reader, start=1):
            yield i, row


def table_record(path, record) -> tuple[str, dict]:
    """``(where, row)`` of a :func:`read_table` item; raises the item's BadRow (a bad JSON line)."""
    line, row = record
    if isinstance(row, BadRow):
        raise row
    return f"{path}:{line + 1}", row


def pick(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def text_or_bad(text, where, field: str, reason: str = "empty caption") -> str:
    text = " ".join(str(text).split()) if text is not None else ""
    if not text:
        raise BadRow(where, None, field, reason)
    return text


def write_pickle_and_json(out_dir: Path, stem: str, mapping: dict) -> list[str]:
    """OFA reads candidate sets as pickles; the JSON twin keeps the same order for humans."""
    with open(out_dir / f"{stem}.pkl", "wb") as f:
        pickle.dump(dict(mapping), f)
    (out_dir / f"{stem}.json").write_text(json.dumps(mapping, indent=1, ensure_ascii=False), encoding="utf-8")
    return [f"{stem}.pkl", f"{stem}.json"]


__all__ = ["BOX_TOLERANCE", "ImageConverter", "fit_box", "box_text", "xywh_to_xyxy", "load_json",
           "load_plain_pickle", "read_table", "table_record", "pick", "text_or_bad", "write_pickle_and_json"]
