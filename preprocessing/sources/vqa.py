"""VQA v2: ``questions`` JSON + ``annotations`` JSON + COCO images → ``vqa`` rows and ``ans2label``.

Each question's ten human answers become OFA's ``conf|!+answer`` items, best first, with the
soft VQA accuracy as confidence: an answer given by n annotators scores min(1, 0.3·n), i.e.
0.3 / 0.6 / 0.9 / 1.0 -- the values in OFA's released TSVs. Answers are normalised as the VQA
evaluation does (:func:`normalise_answer`), so that they match OFA's candidate keys.

The candidate set: with ``ans2label`` given (a pickle or JSON ``{answer: index}``, e.g. the one
built from the training split), it is used as is; otherwise it is built from these annotations:
every ``multiple_choice_answer`` given for at least ``min_answer_count`` questions, most
frequent first, and written as ``ans2label.pkl`` (what OFA reads) and ``ans2label.json``.
Answers outside the candidate set are left out of a row (OFA's trie-constrained loss gives an
out-of-set answer an infinite loss); a question with none left is skipped, unless
``keep_all_answers``. A test split without annotations gives rows with an empty answers field.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.sources.common import (
    ImageConverter, load_json, load_plain_pickle, text_or_bad, write_pickle_and_json,
)


# The VQA evaluation's answer normalisation (also what OFA's trainval_ans2label keys went
# through): punctuation, number words to digits, no articles, commas dropped.
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))} | {"none": "0"}
_ARTICLES = {"a", "an", "the"}
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def normalise_answer(answer: str) -> str:
    """Lowercase; a punctuation mark next to a space (or any, in a number like 1,000) is dropped,
    otherwise it becomes a space; periods outside numbers go; number words become digits;
    articles go; commas go. (The evaluation's contraction table is not applied.)"""
    text = " ".join(str(answer).lower().replace("\n", " ").replace("\t", " ").split())
    for p in _PUNCTUATION:
        if f"{p} " in text or f" {p}" in text or _DIGIT_COMMA_DIGIT.search(text):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _LONE_PERIOD.sub("", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in _ARTICLES).replace(",", "")


def soft_scores(answers: list[str]) -> dict[str, float]:
    """{answer: min(1, 0.3 · count)}, best first (ties: first given)."""
    counts = Counter(a for a in answers if a)
    scored = {a: min(1.0, round(0.3 * n, 1)) for a, n in counts.items()}
    return dict(sorted(scored.items(), key=lambda kv: -kv[1]))


def load_candidates(path) -> dict[str, int]:
    path = Path(path)
    table = load_json(path) if path.suffix == ".json" else load_plain_pickle(path)
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise ValueError(f"{path}: expected a {{answer: index}} mapping")
    return table


class VQA(ImageConverter):
    kind, format, vl_type = "vqa", "vqa", "qa"

    def __init__(self, questions, annotations, images_root, *, image_pattern: str | None = None,
                 ans2label=None, min_answer_count: int = 9, keep_all_answers: bool = False, **kw):
        super().__init__(images_root, **kw)
        self.questions_path = Path(questions)
        self.annotations_path = Path(annotations) if annotations else None
        qdata = load_json(self.questions_path)
        if "questions" not in qdata:
            raise ValueError(f"{self.questions_path}: no 'questions': not a VQA questions file")
        subtype = qdata.get("data_subtype", "")
        self.image_pattern = image_pattern or f"COCO_{subtype}_{{image_id:012d}}.jpg"
        answers: dict[int, list[str]] = {}
        best: Counter = Counter()
        if self.annotations_path is not None:
            adata = load_json(self.annotations_path)
            if "annotations" not in adata:
                raise ValueError(f"{self.annotations_path}: no 'annotations': not a VQA annotations file")
            for a in adata["annotations"]:
                answers[a["question_id"]] = [normalise_answer(x["answer"]) for x in a.get("answers", [])]
                best[normalise_answer(a.get("multiple_choice_answer", ""))] += 1
        self.items = [(q["question_id"], q["image_id"], q["question"]) for q in qdata["questions"]]
        self.answers = answers
        self.keep_all_answers = keep_all_answers
        self.ans2label_source = str(ans2label) if ans2label else None
        if ans2label:
            self.candidates = load_candidates(ans2label)
        elif answers:
            frequent = sorted((a for a, n in best.items() if n >= min_answer_count and a), key=lambda a: (-best[a], a))
            self.candidates = {a: i for i, a in enumerate(frequent)}
        else:
            self.candidates = {}
        self.min_answer_count = min_answer_count

    def settings(self):
        return {"questions": str(self.questions_path), "annotations": str(self.annotations_path),
                "image_pattern": self.image_pattern, "ans2label": self.ans2label_source,
                "min_answer_count": self.min_answer_count, "keep_all_answers": self.keep_all_answers,
                "images_root": str(self.images_root), "format": self.format, "dataset_name": self.dataset_name}

    def total(self):
        return len(self.items)

    def records(self):
        return ((qid, iid, q, self.answers.get(qid)) for qid, iid, q in self.items)

    def rows(self, record):
        qid, image_id, question, answers = record
        path = self.image_path(self.image_pattern.format(image_id=image_id))
        where = f"{self.questions_path} [question {qid}]"
        question = text_or_bad(question, where, "question", "empty question")
        refs = ""
        if answers is not None:
            scores = soft_scores(answers)
            if not self.keep_all_answers:
                scores = {a: s for a, s in scores.items() if a in self.candidates}
            if not scores:
                raise BadRow(where, None, "answers", "no answer in candidate set",
                             f"answers {sorted(set(answers))[:5]}")
            refs = "&&".join(f"{s:g}|!+{a}" if s != 1 else f"1.0|!+{a}" for a, s in scores.items())
        if self.to_vl and not refs:
            raise BadRow(where, None, "answers", "no answers", "pretraining qa rows need answers")
        img = self.load_image(path)
        yield self.out([str(qid), str(image_id), question, refs, "", img.b64])

    def vision_language(self, row):
        qid, _, question, refs, _, b64 = row
        return [qid, b64, "", question, refs, "", self.dataset_name, "qa"]

    def finish(self, out_dir, name):
        if self.ans2label_source or not self.candidates:
            return []
        return write_pickle_and_json(Path(out_dir), "ans2label", self.candidates)
