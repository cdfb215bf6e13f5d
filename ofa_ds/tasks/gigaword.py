"""Gigaword headline generation (spec ofa_data_and_tasks.md §5.6).

Rows: article, headline (digits already masked as ``#``). Both go through ``pre_caption``
(so a LEADING run of ``,.!?*#:;~`` is stripped: "## killed ..." trains as "killed ...", an
OFA quirk kept for parity) with ``<unk>`` -> ``unk``; the source is
``' what is the summary of article " {article} "?'`` cut to ``max_src_length`` tokens; the
target has no leading space (OFA's current code; ``target_leading_space`` restores the
original English version's " {target}"). The ROUGE reference is the raw headline lowercased.

Decoder-input noise: each target token of ``prev_output_tokens`` (bos excluded) is replaced
with probability ``noise_ratio`` by a uniform token from [4, first code id). OFA draws it in
every split; we draw it for training only (validation loss is then not random).

Evaluation: beam search (beam 6, lenpen 0.7, 32 tokens, no repeated 3-grams); the hypothesis
is lowercased, re-tokenised PTB-style (:func:`fix_tokenization`), ``<unk>`` -> `` unk`` and
every ``1`` -> ``#``; ROUGE-1/2/L F1 x 100 from Google's ``rouge-score`` with the Porter
stemmer, averaged over examples (OFA's in-training ``rougeL_f1``, its best-checkpoint metric).
OFA's published test numbers come from its offline script: the same scorer with
rouge-score's bootstrap aggregation (the *mid* F-measure, close to but not equal to the mean).
"""
from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass

import torch

from ofa_ds.data.bad_rows import BadRow
from ofa_ds.data.streams.common import pre_caption
from ofa_ds.tasks.base import FinetuneTask
from ofa_ds.tasks.data import TaskSample

PROMPT_SUMMARY = ' what is the summary of article " {} "?'

# PTB escapes of brackets and SGML characters
_PTB_SYMBOLS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
                "[UNK]": "UNK", "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def gigaword_sample(vocab, fields: list[str], *, path: str, row: int, max_src_length: int = 512,
                    max_tgt_length: int = 64, noise_ratio: float = 0.0, target_leading_space: bool = False,
                    noise_rng: torch.Generator | None = None) -> TaskSample:
    """(article, headline) of one row -> text-only sample; ``ref`` = the ROUGE reference."""
    source, target = fields
    article = pre_caption(source, max_src_length).replace("<unk>", "unk")
    headline = pre_caption(target, max_tgt_length).replace("<unk>", "unk")
    for field, text in (("source", article), ("target", headline)):
        if not text:
            raise BadRow(path, row, field, "empty text")
    src = vocab.encode_line(PROMPT_SUMMARY.format(article), max_tokens=max_src_length)
    tgt = vocab.encode_line((" " if target_leading_space else "") + headline, add_bos=False, add_eos=False)
    noised = add_noise(tgt, noise_ratio, high=vocab.code_offset, generator=noise_rng)
    return TaskSample(id=str(row), source=src, target=torch.cat([tgt, tgt.new_tensor([vocab.eos])]),
                      prev_output_tokens=torch.cat([tgt.new_tensor([vocab.bos]), noised]), patch_image=None,
                      patch_mask=False, code_mask=None, conf=1.0, ref=target.lower())


def add_noise(tokens: torch.Tensor, ratio: float, *, high: int, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Replace each token with probability ``ratio`` by a uniform id in [4, high). The draws
    (n uniforms, then one randint per replaced token) are OFA's, so a generator seeded as
    OFA's global one reproduces its noise."""
    if ratio <= 0:
        return tokens.clone()
    hit = torch.empty(tokens.shape[0]).uniform_(generator=generator) < ratio
    out = tokens.clone()
    out[hit] = torch.randint(4, high, (int(hit.sum()),), generator=generator)
    return out


def _is_number(word: str) -> bool:
    return all(ch.isdigit() or ch == "," for ch in word)


def fix_tokenization(text: str) -> str:
    """PTB-style re-tokenisation of a detokenised headline, as OFA scores Gigaword:
    ``"`` -> ``` `` ```/``''`` alternately, a lone ``'`` -> ``` ` ```/``'``, ``n ' t`` -> ``n't``,
    ``' s``/``' d``/``' ll`` joined, brackets -> ``-lrb-`` etc., ``. . .`` -> ``...``,
    ``3 , 000`` -> ``3,000``, ``3 . 5`` -> ``3.5``, ``U . N .`` -> ``U.N.`` (capitals), and
    ``a - b`` -> ``a-b``."""
    words = text.split()
    out: list[str] = []
    open_double = open_single = False
    glue_next = False  # the previous word ended with a joined "-"
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        nxt = words[i + 1] if i + 1 < n else None
        joined_dash = False
        if w in _PTB_SYMBOLS:
            out.append(_PTB_SYMBOLS[w])
        elif w == '"':
            out.append("''" if open_double else "``")
            open_double = not open_double
        elif w == "'" and out and out[-1].endswith("n") and nxt == "t":
            out[-1] = out[-1][:-1]
            out.append("n't")
            i += 1
        elif w == "'" and nxt in ("s", "d", "ll"):
            out.append("'" + nxt)
            i += 1
        elif w == "'":
            out.append("'" if open_single else "`")
            open_single = not open_single
        elif w == "." and i + 2 < n and words[i + 1] == "." and words[i + 2] == ".":
            out.append("...")
            i += 2
        elif w == "," and out and _is_number(out[-1]) and nxt is not None and _is_number(nxt):
            out[-1] += "," + nxt
            i += 1
        elif w == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt
            i += 1
        elif (w == "." and out and len(out[-1]) == 1 and out[-1].isupper() and i + 2 < n
              and len(words[i + 1]) == 1 and words[i + 1].isupper() and words[i + 2] == "."):
            # "U . N ." (and longer runs of capital + ".") -> "U.N."
            j = i
            while j + 2 < n and len(words[j + 1]) == 1 and words[j + 1].isupper() and words[j + 2] == ".":
                out[-1] += "." + words[j + 1]
                j += 2
            out[-1] += "."
            i = j
        elif w == "-":
            if nxt == "-":
                out.append("--")
                i += 1
            elif nxt is None or not out:
                out.append("-")
            elif out[-1] not in string.punctuation and nxt[0] not in string.punctuation:
                out[-1] += "-"
                joined_dash = True
            else:
                out.append("-")
        elif glue_next and out and w[0] not in string.punctuation:
            out[-1] += w
        else:
            out.append(w)
        glue_next = joined_dash
        i += 1
    return " ".join(out)


def postprocess_hypothesis(text: str) -> str:
    """A decoded hypothesis as OFA's validation scores it."""
    return fix_tokenization(text.lower().strip()).replace("<unk>", " unk").replace("1", "#")


def rouge_scores(predictions: list[str], references: list[str]) -> dict:
    """Mean over examples of ROUGE-1/2/L F1 and recall x 100 (``rouge-score``, Porter stemmer),
    plus the per-example scores."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise RuntimeError("Gigaword evaluation needs rouge-score (pip install rouge-score)") from err
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_example = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    out: dict = {"per_example": per_example}
    count = max(len(per_example), 1)
    for key in ("rouge1", "rouge2", "rougeL"):
        out[f"{key}_f1"] = sum(100 * s[key].fmeasure for s in per_example) / count
        out[f"{key}_recall"] = sum(100 * s[key].recall for s in per_example) / count
    return out


class GigawordTask(FinetuneTask):
    name = "gigaword"
    default_splits = {"train": "finetune/gigaword/train.tsv", "valid": "finetune/gigaword/valid.tsv",
                      "test": "finetune/gigaword/test.tsv"}
    metric = "rougeL_f1"
    selected_cols = "0,1"

    @dataclass
    class Options:
        noise_ratio: float = 0.2
        """Probability of replacing each decoder-input token in training (OFA's --noise-ratio)."""
        max_src_length: int = 512
        """Article words kept, then source tokens kept."""
        target_leading_space: bool = False
        """Encode the headline as " {headline}" (OFA's original English code) instead of OFA's
        current "{headline}"."""

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        self._visits: Counter = Counter()

    def build_sample(self, split, i):
        tsv = self.tsv(split)
        o = self.options
        rng = None
        if split == "train" and o.noise_ratio > 0:
            # A fresh draw on every visit of a row, reproducible for a given seed and order.
            self._visits[i] += 1
            rng = torch.Generator().manual_seed(hash((self.cfg.train.seed, i, self._visits[i])) & (2**63 - 1))
        return gigaword_sample(self.vocab, tsv.row(i), path=str(tsv.path), row=i, max_src_length=o.max_src_length,
                               max_tgt_length=self.cfg.data.max_tgt_length,
                               noise_ratio=o.noise_ratio if split == "train" else 0.0,
                               target_leading_space=o.target_leading_space, noise_rng=rng)

    def predict(self, model, batch):
        from ofa_ds.generation import SequenceGenerator, task_generation_config

        gen = SequenceGenerator(model, task_generation_config("gigaword", beam=self.cfg.task.eval_beam))
        n = batch["net_input"]
        hyps = gen.generate(n["src_tokens"], n["src_lengths"])
        return [{"prediction": postprocess_hypothesis(self.vocab.decode(h[0]["tokens"]))} for h in hyps]

    def score(self, records):
        """Mean per-example ROUGE-1/2/L F1 and recall x 100 (OFA's validation numbers)."""
        out = rouge_scores([r["prediction"] for r in records], [r["target"] for r in records])
        out.pop("per_example")
        return out
