"""OFA's label-smoothed cross entropy ("adjust_label_smoothed_cross_entropy").

Returns sums (loss, nll) and the kept token count; callers divide. The order of
operations follows spec ofa_data_and_tasks.md §4.1: mask logits, log-softmax in fp32,
scale by the per-sample confidence, drop prefix/eos/pad positions, then smoothing over
the allowed tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOptions:
    label_smoothing: float = 0.0
    """epsilon: 1 - epsilon on the target, epsilon spread over the other allowed tokens."""
    constraint_range: tuple[int, int] | None = None
    """(start, end): only ids 0-3 and [start, end) are allowed (e.g. image codes)."""
    ignore_prefix_size: int = 0
    """Drop the first n decoder steps from the loss."""
    ignore_eos: bool = False
    """Drop positions whose target is EOS."""
    drop_worst_ratio: float = 0.0
    """Keep only the int(N*(1-r)) smallest token losses once drop_worst_after updates passed."""
    drop_worst_after: int = 0


@dataclass
class LossOutput:
    loss: torch.Tensor  # summed over kept tokens
    nll_loss: torch.Tensor  # summed, for logging
    ntokens: int


def label_smoothed_cross_entropy(logits_BTV, target_BT, conf_B=None, *, options: LossOptions = LossOptions(),
                                 constraint_masks_BTV=None, pad: int = 1, eos: int = 2,
                                 update_num: int = 0) -> LossOutput:
    V = logits_BTV.shape[-1]
    logits = logits_BTV.float()
    allowed = None  # [B|1, T|1, V] bool, None = all allowed
    if constraint_masks_BTV is not None:
        allowed = constraint_masks_BTV.bool()
        if allowed.shape[1] == target_BT.shape[1]:
            # Positions that are not trained (pad targets, e.g. a VQA decoder prompt) may allow
            # nothing; their softmax would be NaN and poison the backward pass although the loss
            # drops them. Open them up: the trained positions are unchanged.
            allowed = allowed | target_BT.eq(pad)[:, :, None]
    if options.constraint_range is not None:
        start, end = options.constraint_range
        ids = torch.arange(V, device=logits.device)
        in_range = (ids < 4) | ((ids >= start) & (ids < end))
        allowed = in_range[None, None] if allowed is None else allowed & in_range
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    lprobs = torch.log_softmax(logits, dim=-1)
    if conf_B is not None:
        lprobs = lprobs * conf_B.float()[:, None, None]

    target = target_BT
    if options.ignore_prefix_size:
        n = options.ignore_prefix_size
        lprobs, target = lprobs[:, n:], target[:, n:]
        if allowed is not None and allowed.shape[1] > 1:
            allowed = allowed[:, n:]
    keep = target.ne(pad)
    if options.ignore_eos:
        keep = keep & target.ne(eos)
    if allowed is not None:
        allowed = allowed.expand(lprobs.shape)[keep]
    lprobs, target = lprobs[keep], target[keep]  # [N, V], [N]

    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    eps = options.label_smoothing
    smooth = eps_i = None
    if eps > 0:
        if allowed is None:
            smooth = -lprobs.sum(-1)
            eps_i = smoothing_weight(eps, V)
        else:
            # -inf * False would be nan; sum only the allowed entries.
            smooth = -lprobs.masked_fill(~allowed, 0.0).sum(-1)
            eps_i = smoothing_weight(eps, V, allowed.sum(-1).float(), from_mask=constraint_masks_BTV is not None)
    return finish_loss(nll, smooth, eps_i, options, update_num)


def smoothing_weight(eps: float, vocab_size: int, n_allowed=None, *, from_mask: bool = False):
    """Share of epsilon each non-target token gets: spread over the allowed tokens (OFA adds
    1e-6 to the count when the allowed set comes from a constraint mask)."""
    if n_allowed is None:
        return eps / (vocab_size - 1)
    return eps / (n_allowed - 1 + 1e-6) if from_mask else eps / (n_allowed - 1)


def finish_loss(nll_N, smooth_N, eps_i, options: LossOptions, update_num: int) -> LossOutput:
    """Per-token losses -> sums: smoothing (1 - eps - eps_i) * nll + eps_i * smooth, then the
    optional drop-worst selection (token level, as OFA)."""
    eps = options.label_smoothing
    token_loss = (1.0 - eps - eps_i) * nll_N + eps_i * smooth_N if eps > 0 else nll_N
    if options.drop_worst_ratio > 0 and update_num > options.drop_worst_after:
        n_keep = int(token_loss.numel() * (1 - options.drop_worst_ratio))
        token_loss, idx = torch.topk(token_loss, k=n_keep, largest=False)
        nll_N = nll_N[idx]
    return LossOutput(token_loss.sum(), nll_N.sum(), int(token_loss.numel()))
