"""Rules that mask the next-token scores of live hypotheses (spec §7.1, §7.4).

Shape legend: R live hypotheses (rows), T prefix length (bos included), V vocabulary.
Every function edits ``scores_RV`` in place and returns it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

NEG_INF = float("-inf")
NUM_SPECIAL = 4  # <s> <pad> </s> <unk>: never touched by a constraint range

AllowedTokensFn = Callable[[int, Sequence[int]], Sequence[int]]
"""``fn(sentence_index, [bos] + tokens generated after the forced prefix) -> allowed ids``."""


def restrict_to_range(scores_RV: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Ban ids ``[4, start)`` and ``[end, V)``; the special ids 0-3 stay allowed."""
    scores_RV[:, NUM_SPECIAL:start] = NEG_INF
    scores_RV[:, end:] = NEG_INF
    return scores_RV


def allowed_tokens_mask(tokens_RT: torch.Tensor, prefix_lens_R: list[int], sentence_R: list[int],
                        fn: AllowedTokensFn, vocab_size: int, bos: int) -> torch.Tensor:
    """Bool [R, V]: True where ``fn`` allows the id. Rows still inside their forced prefix
    (length bos + prefix <= p) allow everything: the prefix forcing picks their token."""
    mask = torch.zeros(tokens_RT.shape[0], vocab_size, dtype=torch.bool)
    for r, row in enumerate(tokens_RT.tolist()):
        p = prefix_lens_R[r]
        if len(row) > p:
            allowed = list(fn(sentence_R[r], [bos] + row[p + 1:]))
            mask[r, allowed] = True
        else:
            mask[r] = True
    return mask.to(tokens_RT.device)


def force_prefix(scores_RV: torch.Tensor, prefix_R: torch.Tensor, pad: int) -> torch.Tensor:
    """Rows whose forced token is not ``pad`` keep only that token's score."""
    forced = prefix_R.ne(pad)
    if forced.any():
        rows = forced.nonzero(as_tuple=True)[0]
        keep = scores_RV[rows, prefix_R[rows]]
        scores_RV[rows] = NEG_INF
        scores_RV[rows, prefix_R[rows]] = keep
    return scores_RV


def block_repeated_ngrams(scores_RV: torch.Tensor, tokens_RT: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in the row (bos counts).

    The last n-1 tokens are compared against the first n-1 tokens of every earlier n-gram;
    each match bans that n-gram's last token.
    """
    T = tokens_RT.shape[1]
    if n <= 0 or T < n:
        return scores_RV
    ngrams = tokens_RT.unfold(1, n, 1)                    # [R, T-n+1, n]
    key = tokens_RT[:, T - n + 1:]                        # [R, n-1]
    match = (ngrams[:, :, :-1] == key[:, None, :]).all(-1)  # [R, T-n+1]
    rows, which = match.nonzero(as_tuple=True)
    scores_RV[rows, ngrams[rows, which, -1]] = NEG_INF
    return scores_RV
