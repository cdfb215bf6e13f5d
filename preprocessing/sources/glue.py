"""GLUE task files as distributed (``<TASK>/train.tsv``, ``dev.tsv``) → OFA's per-task layouts.

Files are split on tabs only (no quoting: GLUE text contains bare quotes). Layouts: CoLA has no
header (``source, label, author_label, sentence``); the others are found by header name. MNLI's
string labels become OFA's integers (neutral 0, entailment 1, contradiction 2 → maybe / yes / no).
Test files without labels are refused: OFA's GLUE readers need a label column.
"""
from __future__ import annotations

from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.engine import Converter

MNLI_LABELS = {"neutral": "0", "entailment": "1", "contradiction": "2"}
# task -> (header names of the output columns in OFA's order, allowed labels)
TASKS = {
    "sst2": (("sentence", "label"), {"0", "1"}),
    "mrpc": (("#1 String", "#2 String", "Quality"), {"0", "1"}),
    "qqp": (("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), {"0", "1"}),
    "mnli": (("sentence1", "sentence2", "gold_label"), set(MNLI_LABELS)),
    "rte": (("index", "sentence1", "sentence2", "label"), {"entailment", "not_entailment"}),
    "qnli": (("index", "question", "sentence", "label"), {"entailment", "not_entailment"}),
}
COLA_COLUMNS = 4
# Which output columns hold text (must not be empty).
TEXT_COLUMNS = {"cola": (1,), "sst2": (0,), "mrpc": (0, 1), "qqp": (3, 4), "mnli": (0, 1), "rte": (1, 2),
                "qnli": (1, 2)}


class GLUE(Converter):
    kind = "glue"

    def __init__(self, task: str, tsv):
        if task not in (*TASKS, "cola"):
            raise ValueError(f"unknown GLUE task {task!r}; known: cola, {', '.join(TASKS)}")
        self.task, self.path = task, Path(tsv)
        self.format = f"glue-{task}"
        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist")
        if task != "cola":
            with open(self.path, encoding="utf-8") as f:
                header = f.readline().rstrip("\r\n").split("\t")
            wanted = TASKS[task][0]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise ValueError(f"{self.path}: no column(s) {missing} in the header {header} "
                                 f"(a GLUE {task} file with labels is needed)")
            self.columns = [header.index(c) for c in wanted]
            self.width = len(header)

    def settings(self):
        return {"task": self.task, "tsv": str(self.path)}

    def records(self):
        with open(self.path, encoding="utf-8") as f:
            if self.task != "cola":
                next(f)
            for i, line in enumerate(f, start=1 if self.task == "cola" else 2):
                yield i, line.rstrip("\r\n")

    def rows(self, record):
        line_no, line = record
        where = f"{self.path}:{line_no}"
        fields = line.split("\t")
        if self.task == "cola":
            if len(fields) != COLA_COLUMNS:
                raise BadRow(where, None, None, "wrong column count", f"expected {COLA_COLUMNS}, got {len(fields)}")
            out, label = [fields[0], fields[3], fields[1]], fields[1]
            allowed = {"0", "1"}
        else:
            if len(fields) != self.width:
                raise BadRow(where, None, None, "wrong column count", f"expected {self.width}, got {len(fields)}")
            out = [fields[c] for c in self.columns]
            label, allowed = out[-1], TASKS[self.task][1]
        if label not in allowed:
            raise BadRow(where, None, "label", "bad label", f"{label!r} not in {sorted(allowed)}")
        if self.task == "mnli":
            out[-1] = MNLI_LABELS[label]
        if any(not out[c].strip() for c in TEXT_COLUMNS[self.task]):
            raise BadRow(where, None, None, "empty text")
        yield out
