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
