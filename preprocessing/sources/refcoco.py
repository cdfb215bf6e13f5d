"""RefCOCO / RefCOCO+ / RefCOCOg: ``refs(<split_by>).p`` + ``instances.json`` + COCO images →
``refcoco`` rows, one per referring expression, box ``x0,y0,x1,y1`` in pixels.

The refs file is a pickle (the datasets' own format). It is read with an unpickler that accepts
plain data only (dicts, lists, strings, numbers) and refuses any class, so a tampered file
cannot run code; still, only convert refs files from the dataset's publishers.
"""
from __future__ import annotations

from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.sources.common import (
    ImageConverter, box_text, fit_box, load_json, load_plain_pickle, text_or_bad, xywh_to_xyxy,
)


class RefCOCO(ImageConverter):
    kind, format, vl_type = "refcoco", "refcoco", "visual_grounding"

    def __init__(self, refs, instances, images_root, *, split: str = "train", **kw):
        super().__init__(images_root, **kw)
        self.refs_path, self.instances_path, self.split = Path(refs), Path(instances), split
        refs = load_plain_pickle(self.refs_path)
        if not isinstance(refs, list):
            raise ValueError(f"{self.refs_path}: expected a list of refs")
        inst = load_json(self.instances_path)
        files = {img["id"]: img["file_name"] for img in inst["images"]}
        boxes = {a["id"]: a["bbox"] for a in inst["annotations"]}
        self.items = []
        for ref in refs:
            if ref.get("split") != split:
                continue
            sents = [(s.get("sent_id", j), s.get("sent") or s.get("raw", "")) for j, s in enumerate(ref.get("sentences", []))]
            self.items.append((ref["ref_id"], ref["image_id"], files.get(ref["image_id"]),
                               boxes.get(ref["ann_id"]), ref["ann_id"], sents))
        if not self.items:
            raise ValueError(f"{self.refs_path}: no refs in split {split!r}")

    def settings(self):
        return {"refs": str(self.refs_path), "instances": str(self.instances_path), "split": self.split,
                "images_root": str(self.images_root), "format": self.format, "dataset_name": self.dataset_name}

    def vision_language(self, row):
        uid, _, text, box, b64 = row
        return [uid, b64, text, "", box, "", self.dataset_name, "visual_grounding"]

    def total(self):
        return len(self.items)

    def records(self):
        return iter(self.items)

    def rows(self, record):
        ref_id, image_id, file_name, bbox, ann_id, sents = record
        where = f"{self.refs_path} [ref {ref_id}]"
        if file_name is None:
            raise BadRow(where, None, "image_id", "image not in instances", str(image_id))
        if bbox is None:
            raise BadRow(where, None, "ann_id", "annotation not in instances", str(ann_id))
        path = self.image_path(file_name)
        img = self.load_image(path)
        box = box_text(fit_box(xywh_to_xyxy(bbox), img, where, "bbox"))
        for sent_id, text in sents:
            try:
                text = text_or_bad(text, where, f"sentence {sent_id}", "empty expression")
                yield self.out([f"{ref_id}_{sent_id}", str(image_id), text, box, img.b64])
            except BadRow as err:
                yield err
