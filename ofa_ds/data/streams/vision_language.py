"""Vision-language stream: one row of ``vision_language_examples.tsv`` -> two samples (spec §3.2).

Row fields (``selected_cols=0,1,2,3,4,5,6,7``): ``uniq_id, image (base64), caption, question,
refs, gt_objects, dataset_name, type`` with ``type`` one of ``caption``, ``qa``,
``visual_grounding``.

* caption -> captioning sample + image-text-matching (ITM) sample;
* qa -> VQA sample + ITM sample (both weighted by the answer's confidence);
* visual_grounding -> grounding sample (text -> 4 bins) + grounded captioning (bins -> text).

Negatives for ITM come from the negative-sample folder (``all_captions.txt``, ``object.txt``,
``type2ans.json``) through :class:`NegativeSamples`. Upstream's label noise is kept on purpose
(an object swap that finds nothing to replace still says "no"; random captions are not checked
against the positive; spec §10.7), because it is what the released models were trained on.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ofa_ds.data import transforms as T
from ofa_ds.data.streams.common import (
    PROMPT_CAPTION, PROMPT_GROUNDED_CAPTION, PROMPT_GROUNDING, PROMPT_ITM_CAPTION, PROMPT_ITM_QA,
    Sample, check_columns, pre_caption, pre_question, seq2seq,
)
from ofa_ds.data.tsv import BadRow, decode_base64_image

VL_FIELDS = ("uniq_id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type")
VL_TYPES = ("caption", "qa", "visual_grounding")


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _pick_other(candidates: list[str], avoid: str, rng: np.random.Generator) -> str:
    """Upstream's "random element except the last; if it equals ``avoid`` take the last"."""
    if len(candidates) == 1:
        return candidates[0]
    choice = candidates[int(rng.integers(len(candidates) - 1))]
    return candidates[-1] if choice == avoid else choice


class NegativeSamples:
    """Mismatched captions and answers for ITM (spec §3.2, "Negative caption/answer")."""

    def __init__(self, captions: list[str], objects: list[str], type2ans: dict[str, list[str]]):
        if not captions or not objects:
            raise ValueError("negative samples need a non-empty all_captions.txt and object.txt")
        if not type2ans.get("other"):
            raise ValueError("type2ans.json needs a non-empty 'other' answer list")
        self.captions, self.objects, self.type2ans = captions, objects, type2ans
        # answer -> type over every type except 'other'; the last type listing an answer wins.
        self.ans2type = {a: t for t, answers in type2ans.items() if t != "other" for a in answers}

    @classmethod
    def from_dir(cls, path: str) -> "NegativeSamples":
        type2ans_path = os.path.join(path, "type2ans.json")
        try:
            with open(type2ans_path, encoding="utf-8") as f:
                type2ans = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{type2ans_path}: not valid JSON ({err})") from None
        if not isinstance(type2ans, dict) or not all(
                isinstance(a, list) and all(isinstance(x, str) for x in a) for a in type2ans.values()):
            raise ValueError(f"{type2ans_path}: expected an object mapping each answer type to a list of "
                             f"answer strings, e.g. {{\"other\": [\"red\", \"blue\"]}}")
        try:
            return cls(_read_lines(os.path.join(path, "all_captions.txt")),
                       _read_lines(os.path.join(path, "object.txt")), type2ans)
        except ValueError as err:
            raise ValueError(f"negative samples in {path}: {err}") from None

    def caption(self, caption: str, gt_objects: str, rng: np.random.Generator) -> str:
        """40%: swap a ground-truth object for a random one in the raw caption (when the row
        lists objects); otherwise a random caption of the corpus."""
        u = rng.random()
        objects = [o for o in gt_objects.strip().split("&&") if o]
        if objects and u > 0.6:
            gt = objects[int(rng.integers(len(objects)))]
            return caption.replace(gt, _pick_other(self.objects, gt, rng))
        return self.captions[int(rng.integers(len(self.captions)))]

    def answer(self, answer: str, conf: float, rng: np.random.Generator) -> str:
        """A wrong answer of the same type (±1 for some counts), else one from 'other'. One
        uniform draw feeds several decisions, as upstream (spec §10.12)."""
        u = rng.random()
        kind = self.ans2type.get(answer)
        if conf > u + 0.1 and kind is not None:
            if kind == "how many" and answer.isdigit() and u > 0.5:
                return str(int(answer) + (1 if rng.random() < 0.5 else -1))
            return _pick_other(self.type2ans[kind], answer, rng)
        return _pick_other(self.type2ans["other"], answer, rng)


class VisionLanguageStream:
    """Builds the two samples of one VL row; raises :class:`BadRow` for unusable rows."""

    name = "vision_language"

    def __init__(self, tsv, vocab, negatives: NegativeSamples, *, patch_image_size: int = 384,
                 resize_max_size: int = 672, max_src_length: int = 80, max_tgt_length: int = 30,
                 max_image_size: int = 512, num_bins: int = 1000,
                 augment: T.RandomAugment | None = None):
        check_columns(tsv, VL_FIELDS, "vision-language")
        self.tsv, self.vocab, self.negatives = tsv, vocab, negatives
        self.size = patch_image_size
        # Upstream scales are every integer from P to 480 for P = 384, i.e. [P, 1.25 P].
        self.scales = list(range(patch_image_size, patch_image_size * 5 // 4 + 1))
        self.resize_max_size = resize_max_size
        self.max_src, self.max_tgt = max_src_length, max_tgt_length
        self.max_image_size, self.num_bins = max_image_size, num_bins
        self.augment = augment if augment is not None else T.RandomAugment(2, 7)
        # Token ids of fixed prompt parts, encoded once.
        self._caption_prompt = vocab.encode(PROMPT_CAPTION)
        self._region_prompt = vocab.encode(PROMPT_GROUNDED_CAPTION)
        self._yes, self._no = vocab.encode(" yes"), vocab.encode(" no")

    def __len__(self) -> int:
        return len(self.tsv)

    def _bad(self, index: int, field: str, reason: str, detail: str | None = None) -> BadRow:
        return BadRow(self.tsv.path, index, field, reason, detail)

    def samples(self, index: int, rng: np.random.Generator) -> list[Sample]:
        """The two samples of row ``index``; raises :class:`BadRow` for an unusable row."""
        uniq_id, image_b64, caption, question, refs, gt_objects, dataset_name, kind = self.tsv.row(index)
        if kind not in VL_TYPES:
            raise self._bad(index, "type", "unknown type", f"{kind!r}; expected one of {VL_TYPES}")
        image = decode_base64_image(image_b64, file=self.tsv.path, row=index, field="image")
        if kind == "visual_grounding":
            return self._grounding(index, uniq_id, image, caption, refs, rng)
        return self._pair(index, uniq_id, image, kind, caption, question, refs, gt_objects, dataset_name, rng)

    # -- caption / qa ---------------------------------------------------------------------------

    def _pair(self, index, uniq_id, image, kind, caption, question, refs, gt_objects, dataset_name, rng):
        enc = self.vocab.encode
        if kind == "caption":
            target_text = pre_caption(caption, self.max_tgt)
            if not target_text:
                raise self._bad(index, "caption", "empty text")
            src, tgt, conf = self._caption_prompt, enc(" " + target_text), 1.0
        else:
            q = pre_question(question, self.max_src)
            if not q:
                raise self._bad(index, "question", "empty text")
            answers = self._parse_answers(index, refs)
            answer = max(answers, key=answers.get)  # first of the best on ties, as upstream
            src, tgt, conf = enc(" " + q), enc(" " + answer), answers[answer]

        img = T.random_resize_center_crop(image, self.scales, self.resize_max_size, self.size, rng)
        img = self.augment(img, rng)
        pixels = T.to_tensor(img)
        main = seq2seq(self.vocab, uniq_id, src, tgt, pixels, patch_mask=True, code_mask=None, conf=conf)
        if kind == "caption" and dataset_name == "cc12m":
            # cc12m: the first two target tokens are not trained; eos stays.
            main.target[:2] = self.vocab.pad
            main.target[-1] = self.vocab.eos

        positive = rng.random() >= 0.5
        if kind == "caption":
            statement = caption if positive else self.negatives.caption(caption, gt_objects, rng)
            itm_src = enc(PROMPT_ITM_CAPTION.format(pre_caption(statement, self.max_src)))
        else:
            shown = answer if positive else self.negatives.answer(answer, conf, rng)
            itm_src = enc(PROMPT_ITM_QA.format(q, shown))
        itm = seq2seq(self.vocab, uniq_id, itm_src, self._yes if positive else self._no, pixels,
                      patch_mask=True, code_mask=None, conf=conf)
        return [main, itm]

    def _parse_answers(self, index: int, refs: str) -> dict[str, float]:
        answers: dict[str, float] = {}
        for item in refs.split("&&"):
            conf, sep, answer = item.partition("|!+")
            try:
                value = float(conf)
            except ValueError:
                value = float("nan")
            if not sep or not answer.strip() or not np.isfinite(value):
                raise self._bad(index, "refs", "bad answer", f"item {item!r} is not 'conf|!+answer'")
            answers[answer] = value
        return answers

    # -- visual grounding -----------------------------------------------------------------------

    def _grounding(self, index, uniq_id, image, caption, refs, rng):
        text_src, text_tgt = pre_caption(caption, self.max_src), pre_caption(caption, self.max_tgt)
        if not text_src:
            raise self._bad(index, "caption", "empty text")
        try:
            box = [float(v) for v in refs.strip().split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise self._bad(index, "refs", "bad region", f"{refs!r} is not 'x0,y0,x1,y1'")
        why = T.check_box(box, image.width, image.height)
        if why:
            raise self._bad(index, "refs", *why)

        img, box_t = T.random_resize_object_crop(image, torch.tensor(box, dtype=torch.float32), self.scales,
                                                 self.resize_max_size, self.size, rng)
        pixels = T.to_tensor(img)
        bins = [self.vocab.bin_id(int(b)) for b in T.quantize(box_t, self.max_image_size, self.num_bins)]

        enc = self.vocab.encode
        grounding = seq2seq(self.vocab, uniq_id, enc(PROMPT_GROUNDING.format(text_src)), bins, pixels,
                            patch_mask=True, code_mask=None, conf=1.0)
        described = seq2seq(self.vocab, uniq_id, self._region_prompt + bins, enc(" " + text_tgt), pixels,
                            patch_mask=True, code_mask=None, conf=1.0)
        return [grounding, described]
