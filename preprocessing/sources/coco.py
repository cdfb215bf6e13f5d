"""COCO-style JSON: captions (Karpathy split or official annotations) and detection
(COCO / Objects365 ``instances`` files, which share one layout).

Karpathy ``dataset_coco.json``: ``{"images": [{"filepath", "filename", "cocoid", "split",
"sentences": [{"raw", "sentid"}]}]}``. Official ``captions_*.json``: ``{"images": [{"id",
"file_name"}], "annotations": [{"id", "image_id", "caption"}]}``. Detection ``instances_*.json``:
``images``, ``annotations`` (``bbox`` = x, y, w, h) and ``categories`` (``id``, ``name``).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.sources.common import (
    ImageConverter, box_text, fit_box, load_json, text_or_bad, xywh_to_xyxy,
)


class CocoCaptions(ImageConverter):
    """→ ``caption`` rows. ``per_caption`` (default for train): one row per caption, as OFA's
    stage-1 training file; otherwise one row per image with every reference joined by ``&&``
    (OFA's validation/test and SCST files)."""

    kind, format, vl_type = "coco-captions", "caption", "caption"

    def __init__(self, annotations, images_root, *, splits=("train",), per_caption: bool | None = None,
                 **kw):
        super().__init__(images_root, **kw)
        self.annotations = Path(annotations)
        self.splits = tuple(splits)
        self.per_caption = per_caption if per_caption is not None else set(self.splits) <= {"train", "restval"}
        data = load_json(self.annotations)
        self.items = self._karpathy(data) if "sentences" in (data.get("images") or [{}])[0] else self._official(data)

    def _karpathy(self, data) -> list:
        items = []
        for img in data["images"]:
            if img.get("split") not in self.splits:
                continue
            rel = str(Path(img.get("filepath", "")) / img["filename"])
            caps = [(s.get("sentid", j), s.get("raw", "")) for j, s in enumerate(img.get("sentences", []))]
            items.append((img.get("cocoid", img.get("imgid")), rel, caps))
        if not items:
            raise ValueError(f"{self.annotations}: no image in split(s) {self.splits}")
        return items

    def _official(self, data) -> list:
        if "annotations" not in data:
            raise ValueError(f"{self.annotations}: neither a Karpathy split file nor COCO caption annotations")
        caps = defaultdict(list)
        for a in data["annotations"]:
            caps[a["image_id"]].append((a.get("id"), a.get("caption", "")))
        return [(img["id"], img["file_name"], caps.get(img["id"], [])) for img in data["images"]]

    def settings(self):
        return {"annotations": str(self.annotations), "splits": self.splits, "per_caption": self.per_caption,
                "images_root": str(self.images_root), "format": self.format, "dataset_name": self.dataset_name}

    def total(self):
        return len(self.items)

    def records(self):
        return iter(self.items)

    def _resolve(self, rel: str) -> Path:
        path = self.image_path(rel)
        if not path.exists() and self.images_root is not None:
            flat = self.images_root / Path(rel).name  # all images in one folder
            if flat.exists():
                return flat
        return path

    def rows(self, record):
        image_id, rel, caps = record
        path = self._resolve(rel)
        good, dropped = [], []
        for cap_id, text in caps:
            try:
                good.append((cap_id, text_or_bad(text, path, f"caption {cap_id}")))
            except BadRow as err:
                dropped.append(err)
        if not good:
            raise BadRow(path, None, "caption", "no caption", f"image {image_id}")
        img = self.load_image(path)
        if self.per_caption or self.to_vl:
            yield from (self.out([str(cap_id), str(image_id), text, "", img.b64]) for cap_id, text in good)
        else:
            yield [str(image_id), str(image_id), "&&".join(t for _, t in good), "", img.b64]
        yield from dropped

    def vision_language(self, row):
        uid, _, caption, _, b64 = row
        return [uid, b64, caption, "", "", "", self.dataset_name, "caption"]


class CocoDetection(ImageConverter):
    """→ ``detection`` rows: every object ``x0,y0,x1,y1,cat_id,name`` in annotation order.
    Crowd regions are left out unless ``keep_crowd`` (counted as "crowd object left out"). An
    image with a box outside it is skipped as a whole, like the detection stream does."""

    kind, format = "detection", "detection"

    def __init__(self, annotations, images_root, *, keep_crowd: bool = False, **kw):
        super().__init__(images_root, **kw)
        self.annotations = Path(annotations)
        self.keep_crowd = keep_crowd
        data = load_json(self.annotations)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.annotations}: no '{key}': not a COCO/Objects365 instances file")
        names = {c["id"]: c["name"] for c in data["categories"]}
        objects = defaultdict(list)
        for a in data["annotations"]:
            objects[a["image_id"]].append((a.get("id"), a["bbox"], a["category_id"],
                                           names.get(a["category_id"]), bool(a.get("iscrowd", 0))))
        self.items = [(img["id"], img["file_name"], objects.get(img["id"], [])) for img in data["images"]]

    def settings(self):
        return {"annotations": str(self.annotations), "keep_crowd": self.keep_crowd,
                "images_root": str(self.images_root)}

    def total(self):
        return len(self.items)

    def records(self):
        return iter(self.items)

    def rows(self, record):
        image_id, rel, objs = record
        path = self.image_path(rel)
        crowd = [o for o in objs if o[4] and not self.keep_crowd]
        objs = [o for o in objs if not (o[4] and not self.keep_crowd)]
        if not objs:
            raise BadRow(path, None, "objects", "no objects", f"image {image_id}")
        img = self.load_image(path)
        items = []
        for ann_id, bbox, cat_id, name, _ in objs:
            if name is None:
                raise BadRow(path, None, f"annotation {ann_id}", "unknown category", f"category_id {cat_id}")
            box = fit_box(xywh_to_xyxy(bbox), img, path, f"annotation {ann_id}")
            items.append(f"{box_text(box)},{cat_id},{name}")
        yield [str(image_id), img.b64, "&&".join(items)]
        yield from (BadRow(path, None, f"annotation {o[0]}", "crowd object left out") for o in crowd)
