"""Evaluation metrics with OFA's definitions (spec ofa_data_and_tasks.md §6)."""
from __future__ import annotations

import math
from collections import Counter


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def cider_d(hypotheses: list[str], references: list[list[str]], *, n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (x10), document frequencies from these references ("corpus" mode).

    Sentences are whitespace-tokenised; tf-idf vectors per n-gram order with
    idf = log(N_images) - log(max(1, df)); similarity clipped by the reference counts and
    damped by exp(-delta^2 / (2 sigma^2)), delta the difference in bigram counts (upstream's
    notion of length); the per-image score averages orders and references.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0
    refs_words = [[r.split() for r in refs] for refs in references]
    df = Counter()
    for refs in refs_words:
        df.update({g for words in refs for k in range(1, n + 1) for g in _ngrams(words, k)})
    log_n = math.log(float(len(references)))

    def vectors(words):
        vecs, norms = [], []
        for k in range(1, n + 1):
            vec = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in _ngrams(words, k).items()}
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
    return sum(scores) / len(scores)


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
