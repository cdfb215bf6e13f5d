"""Evaluation metrics with OFA's definitions (spec ofa_data_and_tasks.md §6)."""
from __future__ import annotations

import math
from collections import Counter


def cider_d(hypotheses: list[str], references: list[list[str]], *, n: int = 4, sigma: float = 6.0,
            document_frequencies=None) -> float:
    """Corpus CIDEr-D (x10): the mean of :func:`ofa_ds.tasks.cider.cider_d_scores`; document
    frequencies from these references ("corpus" mode) unless a cached table is given."""
    from ofa_ds.tasks.cider import cider_d_scores

    scores = cider_d_scores(hypotheses, references, n=n, sigma=sigma,
                            document_frequencies=document_frequencies)
    return sum(scores) / len(scores) if scores else 0.0


# -- VQA (spec §5.2, §6.2) ---------------------------------------------------------------------
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The common apostrophe-less spellings the official evaluator repairs (a subset of its table).
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "wasnt": "wasn't", "werent": "weren't", "didnt": "didn't", "hasnt": "hasn't",
                 "havent": "haven't", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't",
                 "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "thats": "that's",
                 "whats": "what's", "wheres": "where's", "hes": "he's", "shes": "she's", "its": "it's",
                 "lets": "let's", "theres": "there's", "whos": "who's"}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$"


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA v2 answer normalisation: whitespace, punctuation (removed when glued
    to a word, else a space; a period only when not a decimal point), number words -> digits,
    articles dropped, common contractions repaired."""
    import re

    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(r"(\d)(,)(\d)", text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = re.sub(r"(?!<=\d)(\.)(?!\d)", "", out)
    words = []
    for w in out.split():
        w = _NUMBER_WORDS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_soft_accuracy(prediction: str, human_answers: list[str]) -> float:
    """min(#humans who gave the (normalised) prediction / 3, 1)."""
    pred = normalize_vqa_answer(prediction)
    return min(1.0, sum(normalize_vqa_answer(a) == pred for a in human_answers) / 3.0)


def vqa_v2_accuracy(prediction: str, human_answers: list[str]) -> float:
    """The official VQA v2 accuracy of one question: the soft accuracy against each 9-answer
    subset (one human left out), averaged over the 10 subsets."""
    if len(set(human_answers)) > 1:
        answers = [normalize_vqa_answer(a) for a in human_answers]
        pred = normalize_vqa_answer(prediction)
    else:  # the evaluator only normalises when the humans disagree
        answers = [a.strip() for a in human_answers]
        pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accs.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return sum(accs) / max(len(accs), 1)


# -- classification (GLUE, spec §5.7) ----------------------------------------------------------
def confusion(predictions: list[str], targets: list[str], positive: str = "yes") -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) with ``positive`` as the positive class."""
    tp = sum(p == positive and t == positive for p, t in zip(predictions, targets))
    fp = sum(p == positive and t != positive for p, t in zip(predictions, targets))
    fn = sum(p != positive and t == positive for p, t in zip(predictions, targets))
    tn = len(predictions) - tp - fp - fn
    return tp, fp, fn, tn


def matthews_corrcoef(tp: int, fp: int, fn: int, tn: int) -> float:
    """MCC; 0.0 when a margin is empty (OFA raises ZeroDivisionError there)."""
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def f1_score(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); 0.0 when there is no positive at all (OFA raises there)."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0
