"""Visual entailment (``snli_ve``; spec ofa_data_and_tasks.md §5.4).

Rows: uniq-id, image-id, image, hypothesis, caption (premise), label; read as (uniq_id, image,
hypothesis, caption, label) with ``selected_cols = 0,2,3,4,5``. Labels become the answers
no / yes / maybe (contradiction / entailment / neutral); the source asks whether the image
and the premise imply the hypothesis (``add_caption``, OFA's scripts) or whether the image
describes it. Decoder prompt, trie constraint and all-candidate scoring as VQA; the metric
``snli_score`` is the accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import pre_caption
from ofa_ds.tasks.candidates import AnswerSet
from ofa_ds.tasks.closed_set import PROMPT_TYPES, AnswerSetTask, square_image

LABELS = {"contradiction": "no", "entailment": "yes", "neutral": "maybe"}
ANSWERS = ("no", "yes", "maybe")  # OFA's ans2label order


@dataclass
class SnliVeOptions:
    add_caption: bool = True
    """Put the premise caption into the prompt (OFA's scripts do)."""
    prompt_type: str = "prev_output"
    """Decoder prompt: none | src | prev_output."""

    def validate(self) -> None:
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"task.options.prompt_type must be one of {PROMPT_TYPES}, not {self.prompt_type!r}")


class SnliVeTask(AnswerSetTask):
    name = "snli_ve"
    default_splits = {"train": "finetune/snli_ve/train.tsv", "valid": "finetune/snli_ve/valid.tsv",
                      "test": "finetune/snli_ve/test.tsv"}
    metric = "snli_score"
    selected_cols = "0,2,3,4,5"
    Options = SnliVeOptions

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        self.prompt_type = self.options.prompt_type
        self.answer_set = AnswerSet(ANSWERS, vocab)

    def build_sample(self, split: str, i: int):
        tsv = self.tsv(split)
        uniq_id, image_b64, hypothesis, caption, label = tsv.row(i)
        if label not in LABELS:
            raise BadRow(str(tsv.path), i, "label", "unknown label", f"{label!r}; expected one of {sorted(LABELS)}")
        n = self.cfg.data.max_src_length
        h = pre_caption(hypothesis, n)
        if not h:
            raise BadRow(str(tsv.path), i, "hypothesis", "empty text")
        if self.options.add_caption:
            prompt = f' can image and text1 " {pre_caption(caption, n)} " imply text2 " {h} "?'
        else:
            prompt = f' does the image describe " {h} "?'
        src = self.vocab.encode_line(prompt)
        answer = LABELS[label]
        image = square_image(tsv, i, image_b64, self.cfg.data.patch_image_size)
        return self.prompted_sample(uniq_id, src, answer, tsv=tsv, row=i, field="label", image=image,
                                    conf=1.0, ref={answer: 1.0}, split=split)
