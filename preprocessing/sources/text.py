"""Text-only sources: a corpus for the text-infilling stream, and Gigaword's aligned files.

* :class:`TextCorpus`: ``.txt`` (one document per line) or ``.jsonl`` (``text`` field) →
  ``text`` rows (uniq_id, text); empty documents are counted and skipped.
* :class:`Gigaword`: the release's line-aligned ``*.article.txt`` / ``*.title.txt`` (or any
  source/target pair of files) → ``gigaword`` rows (source, target), text kept as released
  (digits already masked as ``#``).
"""
from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

from ofa_ds.data.bad_rows import BadRow
from preprocessing.engine import Converter
from preprocessing.sources.common import pick, read_table, table_record, text_or_bad


def _must_exist(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p} does not exist")


class TextCorpus(Converter):
    kind, format = "text", "text"

    def __init__(self, path, *, text_key: str | None = None):
        self.path = Path(path)
        _must_exist(self.path)
        self.text_keys = (text_key,) if text_key else ("text", "caption")

    def settings(self):
        return {"input": str(self.path), "text_keys": self.text_keys}

    def records(self):
        if self.path.suffix == ".jsonl":
            yield from read_table(self.path)
            return
        with open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                yield i, {"text": line}

    def rows(self, record):
        where, row = table_record(self.path, record)
        uid = row.get("id") or f"{self.path.stem}-{record[0]}"
        yield [str(uid), text_or_bad(pick(row, self.text_keys), where, "text", "empty text")]


class Gigaword(Converter):
    kind, format = "gigaword", "gigaword"

    def __init__(self, source, target):
        self.source, self.target = Path(source), Path(target)
        _must_exist(self.source, self.target)

    def settings(self):
        return {"source": str(self.source), "target": str(self.target)}

    def records(self):
        with open(self.source, encoding="utf-8") as src, open(self.target, encoding="utf-8") as tgt:
            yield from enumerate(zip_longest(src, tgt))

    def rows(self, record):
        i, (source, target) = record
        where = f"{self.source}:{i + 1}"
        if source is None or target is None:
            raise BadRow(where, None, None, "unaligned files", f"{self.source} and {self.target} differ in length")
        yield [text_or_bad(source, where, "source", "empty text"), text_or_bad(target, where, "target", "empty text")]
