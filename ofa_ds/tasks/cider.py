"""CIDEr-D as OFA computes it (spec ofa_data_and_tasks.md §6.1), in two modes.

* corpus mode: document frequencies from the references being scored (what the COCO
  toolkit's CIDEr does per evaluation);
* cached mode: document frequencies and the corpus size from a fixed table, as OFA's
  in-training validation (``coco-valid-words.p``) and SCST rewards (``coco-train-words.p``)
  use. An n-gram missing from the table has df 0, so idf = log(N) - log(max(1, 0)) = log(N).

Per image: tf-idf vectors for n = 1..4, a similarity clipped by the reference counts and
damped by exp(-delta^2 / (2 sigma^2)) with delta the difference in *bigram counts* (upstream's
notion of length); 10 x the mean over orders and references.
"""
from __future__ import annotations

import json
import math
import pickle
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

_PUNCT = str.maketrans("", "", string.punctuation)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _all_ngrams(words: list[str], n: int) -> Counter:
    out = Counter()
    for k in range(1, n + 1):
        out.update(_ngrams(words, k))
    return out


def scst_sentence(text: str) -> str:
    """A caption as OFA's SCST scores it: punctuation removed, a trailing '.' dropped,
    ' <eos>' appended (the training document frequencies are built the same way)."""
    s = text.strip().translate(_PUNCT).strip()
    if s.endswith("."):
        s = s[:-1]
    return s + " <eos>"


@dataclass
class DocumentFrequencies:
    """df[g] = number of images whose references contain n-gram g; ``num_images`` = N."""

    df: dict
    num_images: float

    @classmethod
    def from_references(cls, references: list[list[str]], *, n: int = 4, wrap_eos: bool = False
                        ) -> "DocumentFrequencies":
        """Build the table from training references, one list per image. ``wrap_eos``
        normalises each reference as SCST scores it (:func:`scst_sentence`)."""
        df: Counter = Counter()
        for refs in references:
            words = [(scst_sentence(r) if wrap_eos else r).split() for r in refs]
            df.update({g for w in words for g in _all_ngrams(w, n)})
        return cls(dict(df), float(len(references)))

    @classmethod
    def load(cls, path) -> "DocumentFrequencies":
        """Our JSON (``{"ref_len": N, "document_frequency": [[ngram, count], ...]}``) or an
        OFA pickle (``coco-train-words.p``), read without executing arbitrary objects."""
        path = Path(path)
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            return cls({tuple(g): float(c) for g, c in raw["document_frequency"]}, float(raw["ref_len"]))
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="latin1").load()
        if not isinstance(raw, dict) or not {"document_frequency", "ref_len"} <= set(raw):
            raise ValueError(f"{path}: expected a dict with 'document_frequency' and 'ref_len'")
        return cls({tuple(g): float(c) for g, c in raw["document_frequency"].items()}, float(raw["ref_len"]))

    def save(self, path) -> None:
        rows = [[list(g), c] for g, c in sorted(self.df.items())]
        Path(path).write_text(json.dumps({"ref_len": self.num_images, "document_frequency": rows}))


class _SafeUnpickler(pickle.Unpickler):
    """OFA's df caches hold only dicts, tuples, strings, numbers and a defaultdict."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "defaultdict"):
            return defaultdict
        if module == "builtins" and name in {"float", "int", "dict", "tuple", "list"}:
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIDEr-D cache")


def cider_d_scores(hypotheses: list[str], references: list[list[str]], *,
                   document_frequencies: DocumentFrequencies | None = None, n: int = 4,
                   sigma: float = 6.0) -> list[float]:
    """Per-hypothesis CIDEr-D; ``references[i]`` are the references of hypothesis i.
    Without ``document_frequencies`` the table comes from ``references`` (corpus mode)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return []
    refs_words = [[r.split() for r in refs] for refs in references]
    if document_frequencies is None:
        table = Counter()
        for refs in refs_words:
            table.update({g for words in refs for g in _all_ngrams(words, n)})
        df, log_n = table, math.log(float(len(references)))
    else:
        df, log_n = document_frequencies.df, math.log(document_frequencies.num_images)

    def vectors(words):
        vecs, norms = [], []
        for k in range(1, n + 1):
            vec = {g: tf * (log_n - math.log(max(1.0, df.get(g, 0.0)))) for g, tf in _ngrams(words, k).items()}
            vecs.append(vec)
            norms.append(math.sqrt(sum(v * v for v in vec.values())))
        return vecs, norms, sum(_ngrams(words, 2).values())

    scores = []
    for hyp, refs in zip(hypotheses, refs_words):
        h_vecs, h_norms, h_len = vectors(hyp.split())
        total = [0.0] * n
        for ref in refs:
            r_vecs, r_norms, r_len = vectors(ref)
            damp = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(v, r_vecs[k].get(g, 0.0)) * r_vecs[k].get(g, 0.0) for g, v in h_vecs[k].items())
                if h_norms[k] and r_norms[k]:
                    total[k] += dot / (h_norms[k] * r_norms[k]) * damp
        scores.append(10.0 * sum(total) / n / max(len(refs), 1))
    return scores
