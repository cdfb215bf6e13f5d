"""Text-infilling stream: BART-style whole-word span masking of plain text (spec §3.5).

Row fields (``selected_cols=0,1``): ``uniq_id, text``. The sample asks
``' what is the complete text of "' + masked text + ' "?'`` and the target is the whole
original text (lowercased, at most 256 tokens: the last 256 of the first 512).

Masking (OFA's defaults): 30% of the word starts are covered by spans whose lengths in
*words* follow a Poisson(3) truncated where the term drops below 1e-7; every span collapses to
one ``<mask>``; zero-length spans become inserted ``<mask>`` tokens. One deliberate detail: the
number of inserted tokens is exactly the number of zero-length spans, where upstream computes
``ceil(len · (n/len))`` in floating point, which can round one higher.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ofa_ds.data.streams.common import (
    EXTRAS_CONF, PROMPT_TEXT_INFILLING_HEAD, PROMPT_TEXT_INFILLING_TAIL, Sample, check_columns, seq2seq,
)
from ofa_ds.data.transforms import zero_image
from ofa_ds.data.tsv import BadRow

# Positions a span may not run past: the final eos costs "infinitely many" words.
_BARRIER = 1 << 30


def poisson_span_probs(lam: float, floor: float = 1e-7, max_len: int = 128) -> np.ndarray:
    """p(L = j) ∝ e^-λ λ^j / j! for j = 0.. up to and including the first term below ``floor``."""
    terms, term = [], math.exp(-lam)
    for j in range(max_len):
        terms.append(term)
        if term < floor:
            break
        term *= lam / (j + 1)
    probs = np.array(terms)
    return probs / probs.sum()


def span_lengths(num_words: int, probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Span lengths (in words) summing to ``num_words``: draw until the total suffices, cut at
    the first prefix reaching it and shorten the last span to fit. Returns the non-zero
    lengths and the number of zero-length spans (which become insertions)."""
    lengths = rng.choice(len(probs), size=num_words, p=probs)
    while lengths.sum() < num_words:
        lengths = np.concatenate([lengths, rng.choice(len(probs), size=num_words, p=probs)])
    cum = np.cumsum(lengths)
    last = int(np.searchsorted(cum, num_words))  # first index whose prefix sum >= num_words
    lengths = lengths[: last + 1].copy()
    lengths[last] = num_words - (cum[last - 1] if last > 0 else 0)
    return lengths[lengths > 0], int((lengths == 0).sum())


def insert_noise(tokens: torch.Tensor, count: int, fill: int, rng: np.random.Generator,
                 random_ratio: float = 0.0, random_range: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """Insert ``count`` tokens (``fill``, or random ones at ``random_ratio``) at random
    positions other than the first and last."""
    if count == 0:
        return tokens
    total = len(tokens) + count
    where = torch.from_numpy(rng.permutation(total - 2)[:count] + 1)
    noise = torch.zeros(total, dtype=torch.bool)
    noise[where] = True
    out = torch.empty(total, dtype=tokens.dtype)
    n_random = math.ceil(count * random_ratio)
    out[where[n_random:]] = fill
    out[where[:n_random]] = torch.from_numpy(rng.integers(*random_range, size=n_random))
    out[~noise] = tokens
    return out


def whole_word_span_mask(tokens: torch.Tensor, word_start: torch.Tensor, mask_id: int,
                         rng: np.random.Generator, *, ratio: float = 0.3,
                         span_probs: np.ndarray | None = None, random_ratio: float = 0.0,
                         random_range: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """Mask ``tokens`` = ``[bos ; text ; eos]`` (spec §3.5); ``word_start`` is the per-vocab
    word-start table. Returns a new tensor."""
    probs = poisson_span_probs(3.0) if span_probs is None else span_probs
    starts_flag = word_start[tokens].clone()
    starts_flag[0] = starts_flag[-1] = False
    num_words = math.ceil(float(starts_flag.sum()) * ratio)
    if num_words == 0:
        return tokens.clone()
    lengths, n_insert = span_lengths(num_words, probs, rng)
    out = tokens.clone()
    if len(lengths) > 0:
        candidates = starts_flag.nonzero().squeeze(1)
        starts = candidates[torch.from_numpy(rng.permutation(len(candidates))[: len(lengths)])]
        use_random = torch.from_numpy(rng.random(len(starts)) < random_ratio)
        out[starts] = mask_id
        out[starts[use_random]] = torch.from_numpy(rng.integers(*random_range, size=int(use_random.sum())))

        # Walk every span forward together: each following word start uses up one word of the
        # span; tokens are deleted while the span has words left, so a span of L words takes
        # L whole words (with their continuation pieces) and leaves a single <mask>. Starts
        # that fall inside another span get deleted too, as in BART.
        cost = starts_flag.long()
        cost[-1] = _BARRIER
        keep = torch.ones(len(out), dtype=torch.bool)
        pos, left = starts, torch.from_numpy(lengths).long() - 1
        while len(pos):
            pos = pos + 1
            left = left - cost[pos]
            alive = left >= 0
            pos, left = pos[alive], left[alive]
            keep[pos] = False
        out = out[keep]
    return insert_noise(out, n_insert, mask_id, rng, random_ratio, random_range)


class TextInfillingStream:
    """One text row -> one infilling sample; raises :class:`BadRow` for empty text."""

    name = "text"

    def __init__(self, tsv, vocab, *, image_size: int = 256, mask_ratio: float = 0.3,
                 poisson_lambda: float = 3.0, random_ratio: float = 0.0,
                 max_text_tokens: int = 512, keep_last_tokens: int = 256):
        check_columns(tsv, ("uniq_id", "text"), "text")
        self.tsv, self.vocab, self.image_size = tsv, vocab, image_size
        self.mask_ratio, self.random_ratio = mask_ratio, random_ratio
        self.span_probs = poisson_span_probs(poisson_lambda)
        self.max_text_tokens, self.keep_last_tokens = max_text_tokens, keep_last_tokens
        self.word_start = vocab.is_word_start()
        # Random replacement tokens come from the plain-text range [4, code_offset).
        self.random_range = (4, vocab.code_offset)
        # Upstream encodes the whole prompt and puts the text before its last two tokens
        # ('Ġ"', '?'). With OFA's GPT-2 BPE that equals encoding the two halves apart, which
        # also keeps the quotes whole with vocabularies that merge '"?' into one token.
        self.prefix = vocab.encode(PROMPT_TEXT_INFILLING_HEAD)
        self.suffix = vocab.encode(PROMPT_TEXT_INFILLING_TAIL)

    def __len__(self) -> int:
        return len(self.tsv)

    def samples(self, index: int, rng: np.random.Generator) -> list[Sample]:
        return [self.sample(index, rng)]

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        uniq_id, text = self.tsv.row(index)
        text = text.strip().lower()
        if not text:
            raise BadRow(self.tsv.path, index, "text", "empty text")
        ids = self.vocab.encode(" " + text)[: self.max_text_tokens][-self.keep_last_tokens:]
        full = torch.tensor([self.vocab.bos, *ids, self.vocab.eos], dtype=torch.long)
        masked = whole_word_span_mask(full, self.word_start, self.vocab.mask, rng, ratio=self.mask_ratio,
                                      span_probs=self.span_probs, random_ratio=self.random_ratio,
                                      random_range=self.random_range)
        src = [*self.prefix, *masked[1:-1].tolist(), *self.suffix]
        return seq2seq(self.vocab, uniq_id, src, ids, zero_image(self.image_size),
                       patch_mask=False, code_mask=False, conf=EXTRAS_CONF)
