"""Search strategies: how the next candidates are drawn from the step's log-probs.

Shape legend: N unfinished sentences, K beam size, V vocabulary, C candidates per sentence
(2K for beam search, so that K survive even if half of them end in eos; K for sampling).

A strategy's ``step`` receives the processed log-probs of every live hypothesis and the
hypotheses' cumulative scores, and returns ``Candidates`` ranked best first. Each candidate
names the beam it extends, the token it appends and the new cumulative score.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Candidates(NamedTuple):
    scores: torch.Tensor  # [N, C] cumulative log-prob after appending ``tokens``
    tokens: torch.Tensor  # [N, C] appended token ids
    beams: torch.Tensor   # [N, C] beam index (0..K-1) each candidate extends


class BeamSearch:
    """Top 2K (beam, token) pairs by cumulative score."""

    def step(self, step: int, lprobs_NKV: torch.Tensor, cum_scores_NK: torch.Tensor | None) -> Candidates:
        N, K, V = lprobs_NKV.shape
        if step == 0:
            # All K beams hold the same prefix [bos]: expand only the first one.
            scores = lprobs_NKV[:, :1]
        else:
            scores = lprobs_NKV + cum_scores_NK.unsqueeze(-1)
        flat = scores.reshape(N, -1)
        top_scores, top_idx = flat.topk(min(2 * K, flat.shape[1] - 1), dim=1)
        return Candidates(top_scores, top_idx % V, torch.div(top_idx, V, rounding_mode="floor"))


class Sampling:
    """One random token per beam, from the top-k (or nucleus top-p) of its distribution.

    At step 0 the K samples are all drawn from the first beam (the beams are identical then).
    ``multinomial`` renormalises inside the kept set; the recorded score is the log-prob from
    the full softmax. With neither top-k nor top-p, the whole distribution is sampled.
    """

    def __init__(self, topk: int = -1, topp: float = -1.0, generator: torch.Generator | None = None):
        if topk > 0 and topp > 0:
            raise ValueError("use either top-k or top-p sampling, not both")
        self.topk, self.topp, self.generator = topk, topp, generator

    def _restrict(self, lprobs_RV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs [R, W], token ids [R, W]) of the tokens eligible for sampling."""
        if self.topk > 0:
            return lprobs_RV.topk(min(self.topk, lprobs_RV.shape[-1]), dim=-1)
        if self.topp > 0:
            sorted_lp, order = lprobs_RV.sort(dim=-1, descending=True)
            probs = sorted_lp.exp()
            mass_before = probs.cumsum(-1) - probs
            keep = mass_before < self.topp  # the smallest prefix whose mass reaches topp
            width = int(keep.sum(-1).max())
            sorted_lp = sorted_lp[:, :width].masked_fill(~keep[:, :width], float("-inf"))
            return sorted_lp, order[:, :width]
        ids = torch.arange(lprobs_RV.shape[-1], device=lprobs_RV.device)
        return lprobs_RV, ids.expand_as(lprobs_RV)

    def _draw(self, lprobs_RW: torch.Tensor, n: int) -> torch.Tensor:
        probs = lprobs_RW.exp()
        # A row with nothing allowed draws its first entry; its -inf score marks it dead.
        empty = probs.sum(-1) == 0
        if empty.any():
            probs[empty, 0] = 1.0
        return torch.multinomial(probs, n, replacement=True, generator=self.generator)  # [R, n]

    def step(self, step: int, lprobs_NKV: torch.Tensor, cum_scores_NK: torch.Tensor | None) -> Candidates:
        N, K, V = lprobs_NKV.shape
        if step == 0:
            lp, ids = self._restrict(lprobs_NKV[:, 0])               # [N, W]
            pick = self._draw(lp, K)                                   # [N, K]
            return Candidates(lp.gather(1, pick), ids.gather(1, pick), torch.zeros_like(pick))
        lp, ids = self._restrict(lprobs_NKV.reshape(N * K, V))        # [NK, W]
        pick = self._draw(lp, 1)                                       # [NK, 1]
        scores = lp.gather(1, pick).view(N, K) + cum_scores_NK
        beams = torch.arange(K, device=pick.device).expand(N, K)
        return Candidates(scores, ids.gather(1, pick).view(N, K), beams)
