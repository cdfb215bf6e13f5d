"""GLUE as text-only prompts with one-token answers (spec ofa_data_and_tasks.md §5.7).

CoLA, MNLI, MRPC, QNLI, QQP, RTE, SST-2, each with OFA's prompt, column layout, label words
and candidate order. Every sentence is lowercased, whitespace-normalised and cut to
``data.max_src_length`` words (OFA's scripts: 512). ``prompt_type = src`` (all of OFA's
scripts): the decoder reads the whole source ``[bos ; prompt ; eos]`` and the label token is
the target at its last position only (no eos); the constraint allows just the label tokens
there. Prediction: one forward pass, the masked argmax at the last position. Metrics: ``acc``
(all), ``mcc`` (CoLA), ``F1`` with "yes" positive (MRPC, QQP); OFA divides by zero when a
confusion-matrix margin is empty, here those metrics are 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.data import TaskSample
from ofa_ds.tasks.metrics import confusion, f1_score, matthews_corrcoef


@dataclass(frozen=True)
class GlueSpec:
    selected_cols: str
    fields: tuple[str, ...]      # names of the selected columns, the label last
    prompt: str                  # format string over the text fields
    labels: dict                 # raw label -> answer word
    candidates: tuple[str, ...]  # OFA's ans2label order
    metrics: tuple[str, ...]


_YES_NO = {"0": "no", "1": "yes"}
_ENTAIL = {"not_entailment": "no", "entailment": "yes"}
SPECS = {
    "cola": GlueSpec("1,2", ("sentence", "label"), ' is the text " {sentence} " grammatically correct?',
                     _YES_NO, ("no", "yes"), ("acc", "mcc")),
    "sst2": GlueSpec("0,1", ("sentence", "label"), ' is the sentiment of text " {sentence} " positive or negative?',
                     {"0": "negative", "1": "positive"}, ("negative", "positive"), ("acc",)),
    "mrpc": GlueSpec("0,1,2", ("text1", "text2", "label"),
                     ' does text1 " {text1} " and text2 " {text2} " have the same semantics?',
                     _YES_NO, ("no", "yes"), ("acc", "F1")),
    "qqp": GlueSpec("3,4,5", ("question1", "question2", "label"),
                    ' is question " {question1} " and question " {question2} " equivalent?',
                    _YES_NO, ("no", "yes"), ("acc", "F1")),
    "mnli": GlueSpec("0,1,2", ("text1", "text2", "label"), ' can text1 " {text1} " imply text2 " {text2} "?',
                     {"0": "maybe", "1": "yes", "2": "no"}, ("maybe", "yes", "no"), ("acc",)),
    "rte": GlueSpec("1,2,3", ("text1", "text2", "label"), ' can text1 " {text1} " imply text2 " {text2} "?',
                    _ENTAIL, ("no", "yes"), ("acc",)),
    "qnli": GlueSpec("1,2,3", ("question", "sentence", "label"),
                     ' does " {sentence} " contain the answer to question " {question} "?',
                     {**_ENTAIL, "0": "no", "1": "yes"}, ("no", "yes"), ("acc",)),
}


def normalise(text: str, max_words: int) -> str:
    return " ".join(text.lower().strip().split()[:max_words])


@dataclass
class GlueOptions:
    prompt_type: str = "src"
    """Decoder prompt: src (OFA's scripts; the label is read at the source's eos), none, or
    prev_output (the source without eos)."""

    def validate(self) -> None:
        if self.prompt_type not in ("none", "src", "prev_output"):
            raise ValueError(f"task.options.prompt_type must be none, src or prev_output, not {self.prompt_type!r}")


class GlueTask(FinetuneTask):
    spec: GlueSpec
    Options = GlueOptions

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        self.selected_cols = self.spec.selected_cols
        self.metric = self.spec.metrics[-1]
        self.answer_tokens = {}
        for a in self.spec.candidates:
            ids = vocab.encode_line(" " + a, add_bos=False, add_eos=False).tolist()
            if len(ids) != 1:
                raise ValueError(f"{self.name}: the answer {a!r} is {len(ids)} tokens in this vocabulary "
                                 f"({data_vocab(cfg)}); GLUE heads need one-token answers")
            self.answer_tokens[a] = ids[0]
        self.candidate_ids = sorted(self.answer_tokens.values())
        self.answer_of = {t: a for a, t in self.answer_tokens.items()}

    @property
    def default_splits(self):
        return {s: f"finetune/glue/{self.name}/{s}.tsv" for s in ("train", "valid", "test")}

    def build_sample(self, split: str, i: int) -> TaskSample:
        tsv = self.tsv(split)
        values = dict(zip(self.spec.fields, tsv.row(i)))
        label = values.pop("label").strip()
        if label not in self.spec.labels:
            raise BadRow(str(tsv.path), i, "label", "unknown label",
                         f"{label!r}; expected one of {sorted(self.spec.labels)}")
        texts = {k: normalise(v, self.cfg.data.max_src_length) for k, v in values.items()}
        for k, v in texts.items():
            if not v:
                raise BadRow(str(tsv.path), i, k, "empty text")
        src = self.vocab.encode_line(self.spec.prompt.format(**texts))
        answer = self.spec.labels[label]
        pad, bos = self.vocab.pad, self.vocab.bos
        prompt = {"none": src[:1], "src": src, "prev_output": src[:-1]}[self.options.prompt_type]
        target = torch.full((len(prompt),), pad, dtype=torch.long)
        target[-1] = self.answer_tokens[answer]
        rows = [[] for _ in range(len(prompt) - 1)] + [self.candidate_ids]
        return TaskSample(id=i, source=src, target=target, prev_output_tokens=prompt.clone(), patch_image=None,
                          patch_mask=False, code_mask=None, conf=1.0, constraint_rows=rows, ref={answer: 1.0})

    def candidate_logits(self, model, batch) -> torch.Tensor:
        """[B, C] logits of the candidate tokens (``self.candidate_ids`` order) at the last
        decoder position of each row."""
        n = batch["net_input"]
        logits, _ = model(n["src_tokens"], n["src_lengths"], n["prev_output_tokens"])
        return self.candidates_at_last(logits, n["prev_output_tokens"])

    def candidates_at_last(self, logits_BTV: torch.Tensor, prev_output_tokens: torch.Tensor) -> torch.Tensor:
        last = prev_output_tokens.ne(self.vocab.pad).sum(1) - 1
        return logits_BTV[torch.arange(len(last)), last].float()[:, self.candidate_ids]

    def predictions_from(self, candidate_logits: torch.Tensor) -> list[str]:
        return [self.answer_of[self.candidate_ids[k]] for k in candidate_logits.argmax(1).tolist()]

    def predict(self, model, batch) -> list[dict]:
        return [{"prediction": p} for p in self.predictions_from(self.candidate_logits(model, batch))]

    def score(self, records: list[dict]) -> dict:
        preds = [r["prediction"] for r in records]
        refs = [next(iter(r["target"])) for r in records]
        out = {"acc": sum(p == t for p, t in zip(preds, refs)) / max(len(records), 1)}
        tp, fp, fn, tn = confusion(preds, refs, positive="yes")
        if "mcc" in self.spec.metrics:
            out["mcc"] = matthews_corrcoef(tp, fp, fn, tn)
        if "F1" in self.spec.metrics:
            out["F1"] = f1_score(tp, fp, fn)
        return out


def data_vocab(cfg) -> str:
    return f"data.vocab_dir = {cfg.data.vocab_dir}"


def _subtask(name: str):
    return type(f"{name.upper()}Task", (GlueTask,), {"name": name, "spec": SPECS[name],
                                                     "__doc__": f"GLUE {name} (spec §5.7)."})


COLATask, SST2Task, MRPCTask, QQPTask, MNLITask, RTETask, QNLITask = (
    _subtask(n) for n in ("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli"))
