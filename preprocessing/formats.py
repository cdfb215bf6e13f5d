"""The TSV layouts ofa-ds reads, by name: what converters write and ``ofa-ds inspect`` checks.

Columns are the *raw* file columns (before a reader's ``selected_cols``), as in
spec ofa_data_and_tasks.md §3.1 (pretraining streams) and §5 (finetuning tasks). ``image`` names
the base64 image column, ``boxes`` a column of boxes, ``codes`` a column of VQ-GAN code ids.
Box columns come in two shapes: ``region`` (one ``x0,y0,x1,y1``) and ``objects``
(``x0,y0,x1,y1,cat_id,name`` items joined by ``&&``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    image: str | None = None
    text: tuple[str, ...] = ()
    boxes: str | None = None
    box_kind: str | None = None          # "region" | "objects"
    codes: str | None = None
    num_codes: int | None = None
    labels: frozenset[str] | None = None  # allowed values of the "label" column
    doc: str = ""

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def index(self, column: str) -> int:
        return self.columns.index(column)


_BINARY = frozenset({"0", "1"})
_NLI = frozenset({"entailment", "not_entailment"})

FORMATS: dict[str, Format] = {f.name: f for f in (
    # -- pretraining streams (§3.1)
    Format("vision-language", ("uniq_id", "image", "caption", "question", "refs", "gt_objects",
                               "dataset_name", "type"), image="image", text=("caption", "question"),
           doc="pretraining VL rows; type is caption | qa | visual_grounding"),
    Format("text", ("uniq_id", "text"), text=("text",), doc="pretraining text infilling"),
    Format("image-infilling", ("image_id", "image", "code"), image="image", codes="code", num_codes=256,
           doc="256x256 image and the 16x16 VQ-GAN codes of its central 128x128"),
    Format("detection", ("image_id", "image", "label"), image="image", boxes="label", box_kind="objects",
           doc="objects x0,y0,x1,y1,cat_id,name joined by &&, original pixels"),
    # -- finetuning tasks (§5)
    Format("caption", ("uniq_id", "image_id", "caption", "objects", "image"), image="image", text=("caption",),
           doc="caption; evaluation rows join all references with &&"),
    Format("vqa", ("question_id", "image_id", "question", "answers", "objects", "image"), image="image",
           text=("question", "answers"), doc="answers: conf|!+answer joined by &&"),
    Format("refcoco", ("uniq_id", "image_id", "text", "region", "image"), image="image", text=("text",),
           boxes="region", box_kind="region", doc="one referring expression and its box per row"),
    Format("snli-ve", ("uniq_id", "image_id", "image", "hypothesis", "caption", "label"), image="image",
           text=("hypothesis", "caption", "label"), labels=frozenset({"entailment", "neutral", "contradiction"})),
    Format("imagenet", ("image", "label", "class_name"), image="image", text=("class_name",),
           doc="label: 1-based index in sorted class-folder order"),
    Format("image-gen", ("uniq_id", "code", "caption"), text=("caption",), codes="code", num_codes=1024,
           doc="text-to-image: 32x32 VQ-GAN codes of the 256x256 image, lowercased caption"),
    Format("gigaword", ("source", "target"), text=("source", "target")),
    Format("glue-cola", ("source", "sentence", "label"), text=("sentence", "label"), labels=_BINARY),
    Format("glue-sst2", ("sentence", "label"), text=("sentence", "label"), labels=_BINARY),
    Format("glue-mrpc", ("sentence1", "sentence2", "label"), text=("sentence1", "sentence2", "label"),
           labels=_BINARY),
    Format("glue-qqp", ("id", "qid1", "qid2", "question1", "question2", "label"),
           text=("question1", "question2", "label"), labels=_BINARY),
    Format("glue-mnli", ("sentence1", "sentence2", "label"), text=("sentence1", "sentence2", "label"),
           labels=frozenset({"0", "1", "2"}),
           doc="label: 0 neutral, 1 entailment, 2 contradiction (OFA's maybe / yes / no)"),
    Format("glue-rte", ("index", "sentence1", "sentence2", "label"), text=("sentence1", "sentence2", "label"),
           labels=_NLI),
    Format("glue-qnli", ("index", "question", "sentence", "label"), text=("question", "sentence", "label"),
           labels=_NLI | _BINARY),
)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]
