"""SNLI-VE JSONL (``snli_ve_{train,dev,test}.jsonl``: ``Flickr30K_ID``, ``sentence1`` = premise,
``sentence2`` = hypothesis, ``gold_label``) + Flickr30k images → ``snli-ve`` rows."""
from __future__ import annotations

from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.sources.common import ImageConverter, read_table, table_record, text_or_bad

LABELS = ("entailment", "neutral", "contradiction")


class SNLIVE(ImageConverter):
    kind, format = "snli-ve", "snli-ve"

    def __init__(self, jsonl, images_root, **kw):
        super().__init__(images_root, **kw)
        self.path = Path(jsonl)
        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist")

    def settings(self):
        return {"jsonl": str(self.path), "images_root": str(self.images_root)}

    def records(self):
        return read_table(self.path)

    def rows(self, record):
        where, obj = table_record(self.path, record)
        label = obj.get("gold_label")
        if label not in LABELS:
            raise BadRow(where, None, "gold_label", "bad label", f"{label!r} not in {LABELS}")
        image_id = str(obj.get("Flickr30K_ID") or Path(str(obj.get("Flikr30kID", ""))).stem)
        if not image_id:
            raise BadRow(where, None, "Flickr30K_ID", "no image id")
        hypothesis = text_or_bad(obj.get("sentence2"), where, "sentence2", "empty text")
        premise = text_or_bad(obj.get("sentence1"), where, "sentence1", "empty text")
        img = self.load_image(self.image_path(f"{image_id}.jpg"))
        uid = obj.get("pairID") or f"{image_id}-{record[0]}"
        yield [str(uid), image_id, img.b64, hypothesis, premise, label]
