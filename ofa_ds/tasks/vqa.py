"""VQA as generation over a closed answer set (``vqa_gen``; spec ofa_data_and_tasks.md §5.2).

Rows (OFA's columns): question-id, image-id, question, answers, objects, image; read as
(qid, image, question, answers, objects) with ``selected_cols = 0,5,2,3,4``. ``answers`` is
``conf|!+answer`` items joined by ``&&``; the target is the most confident answer (first on
ties) and ``conf`` its confidence, which weights the sample's loss. The question is
normalised (``pre_question``, ``max_src_length`` words, a ``?`` added) and, with
``add_object``, followed by `` object: <first max_object_length objects>``.

Prediction: ``allcand`` (every candidate of ``ans2label`` scored through the trie, the best
one wins; the fast scorer in ``candidates.py``) or ``beamsearch`` (beam 5, unnormalised, the
question forced as prefix, the trie after it). Metric: ``vqa_score`` = mean over questions of
the prediction's confidence in the row (OFA's validation score; the TSV's confidences are the
standard soft VQA accuracies). ``vqa_v2_acc`` as the official VQA v2 evaluator computes it is
reported too when ``annotations`` names the official annotation file. Predictions:
``[{"question_id": int, "answer": str}]`` (EvalAI's format).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import pre_question
from ofa_ds.tasks.candidates import AnswerSet, load_answer_list
from ofa_ds.tasks.closed_set import PROMPT_TYPES, AnswerSetTask, square_image


@dataclass
class VqaOptions:
    ans2label: str = "finetune/vqa/trainval_ans2label.pkl"
    """Candidate answers, relative to data.root: OFA's pickled {answer: label} or a JSON object
    or list; candidate i is the i-th entry."""
    prompt_type: str = "prev_output"
    """Decoder prompt: none | src | prev_output (OFA's scripts: prev_output)."""
    add_object: bool = True
    """Append " object: ..." (the row's detected objects) to the question."""
    max_object_length: int = 30
    val_inference: str = "allcand"
    """allcand (score every candidate) | beamsearch (beam 5 with the trie)."""
    unconstrained_training: bool = False
    """Plain cross entropy over the whole vocabulary instead of the trie-masked one."""
    annotations: str | None = None
    """Official VQA v2 annotation JSON (question_id -> 10 answers) for vqa_v2_acc; optional."""

    def validate(self) -> None:
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"task.options.prompt_type must be one of {PROMPT_TYPES}, not {self.prompt_type!r}")
        if self.val_inference not in ("allcand", "beamsearch"):
            raise ValueError(f"task.options.val_inference must be allcand or beamsearch, not {self.val_inference!r}")


def parse_answers(text: str, *, file, row: int) -> dict[str, float]:
    """``conf|!+answer&&...`` -> {answer: conf} in row order."""
    ref = {}
    for item in text.split("&&"):
        if "|!+" not in item:
            raise BadRow(file, row, "answers", "expected conf|!+answer items", item[:60])
        conf, answer = item.split("|!+", 1)
        try:
            ref[answer] = float(conf)
        except ValueError:
            raise BadRow(file, row, "answers", "confidence is not a number", conf[:20]) from None
    return ref


class VqaGenTask(AnswerSetTask):
    name = "vqa_gen"
    default_splits = {"train": "finetune/vqa/train.tsv", "valid": "finetune/vqa/valid.tsv",
                      "test": "finetune/vqa/test.tsv"}
    metric = "vqa_score"
    selected_cols = "0,5,2,3,4"
    predictions_name = "predictions.json"
    Options = VqaOptions

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        o = self.options
        self.prompt_type, self.inference = o.prompt_type, o.val_inference
        self.constrained = not o.unconstrained_training
        path = self.resolve(o.ans2label, "task.options.ans2label")
        self.answer_set = AnswerSet(load_answer_list(path), vocab, max_tokens=cfg.data.max_tgt_length)
        self.annotations = None
        if o.annotations:
            self.annotations = load_vqa_annotations(self.resolve(o.annotations, "task.options.annotations"))

    def build_sample(self, split: str, i: int):
        tsv = self.tsv(split)
        qid, image_b64, question, answers, objects = tsv.row(i)
        d, o = self.cfg.data, self.options
        q = pre_question(question, d.max_src_length)
        if not q:
            raise BadRow(str(tsv.path), i, "question", "empty question")
        q = q if q.endswith("?") else q + "?"
        src = self.vocab.encode_line(f" {q}", add_bos=False, add_eos=False)
        if o.add_object:
            names = " ".join(objects.strip().split("&&")[:o.max_object_length]) if objects.strip() else ""
            src = torch.cat([src, self.vocab.encode_line(f" object: {names}", add_bos=False, add_eos=False)])
        src = torch.cat([torch.tensor([self.vocab.bos]), src, torch.tensor([self.vocab.eos])])
        ref = parse_answers(answers, file=str(tsv.path), row=i)
        answer, conf = max(ref.items(), key=lambda kv: kv[1])  # first of the most confident
        image = square_image(tsv, i, image_b64, d.patch_image_size)
        return self.prompted_sample(qid, src, answer, tsv=tsv, row=i, field="answers", image=image,
                                    conf=conf, ref=ref, split=split)

    def score(self, records):
        from ofa_ds.tasks.metrics import vqa_v2_accuracy

        out = super().score(records)
        if self.annotations is not None:
            accs = [vqa_v2_accuracy(r["prediction"], self.annotations[str(r["id"])])
                    for r in records if str(r["id"]) in self.annotations]
            out["vqa_v2_acc"] = sum(accs) / max(len(accs), 1)
        return out

    def write_predictions(self, records, path: Path) -> None:
        def qid(x):
            try:
                return int(x)
            except (TypeError, ValueError):
                return x

        path.write_text(json.dumps([{"question_id": qid(r["id"]), "answer": r["prediction"]} for r in records]))


def load_vqa_annotations(path: Path) -> dict[str, list[str]]:
    """question_id -> the human answers, from the official ``v2_mscoco_*_annotations.json``."""
    data = json.loads(path.read_text())
    return {str(a["question_id"]): [x["answer"] for x in a["answers"]] for a in data["annotations"]}
