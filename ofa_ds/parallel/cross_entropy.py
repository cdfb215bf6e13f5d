"""OFA's label-smoothed cross entropy on vocab-parallel logits.

``vocab_parallel_label_smoothed_cross_entropy`` takes this rank's slice of the logits,
[B, T, V/tp] (the ``VocabParallelHead`` output), and returns exactly what
``ofa_ds.tasks.criterion.label_smoothed_cross_entropy`` returns for the full logits: the
same constraint masks / constraint range, per-sample confidence, prefix/EOS/pad dropping,
smoothing over the allowed tokens only, drop-worst. Every TP rank gets the same loss.

Per kept token (row) with allowed set A, target t, confidence c, the TP reductions are:

    m   = max_j over all ranks of l_j            (all-reduce MAX, no gradient)
    lse = m + log(sum_j exp(l_j - m))            (all-reduce SUM of the local sums)
    nll = -c (l_t - lse)                         (the owner of t contributes l_t, others 0)
    smooth = -c sum_{j in A} (l_j - lse)         (all-reduce SUM)

and the gradient is written out instead of left to autograd, so only the softmax slice
is kept for backward (logits are the largest activation of OFA training):

    d nll / d l_j    = c (p_j - [j = t])
    d smooth / d l_j = c (|A| p_j - [j in A])

``valid_vocab_size`` supports a vocabulary padded to a multiple of tp: ids at or above it
are excluded like a constraint, and the smoothing denominators use the real size.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ofa_ds.parallel.groups import TPContext
from ofa_ds.parallel.mappings import gather_from_tp, max_over_tp
from ofa_ds.tasks.criterion import LossOptions, LossOutput, finish_loss, smoothing_weight


def _sum_over_tp(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    """Plain (non-autograd) all-reduce: the Function below writes its own backward."""
    if tp.size == 1:
        return x
    x = x.contiguous().clone()
    dist.all_reduce(x, group=tp.group)
    return x


class _VocabParallelSmoothedNLL(torch.autograd.Function):
    """Rows [N, V/tp] -> per-row (nll, smooth), both already scaled by the confidence."""

    @staticmethod
    def forward(ctx, logits_Nv, target_N, conf_N, allowed_Nv, vocab_start, tp):
        v = logits_Nv.shape[-1]
        masked = logits_Nv if allowed_Nv is None else logits_Nv.masked_fill(~allowed_Nv, float("-inf"))
        m_N = max_over_tp(masked.max(dim=-1).values, tp)
        probs = torch.exp(masked - m_N[:, None])
        sumexp_N = _sum_over_tp(probs.sum(-1), tp)
        lse_N = m_N + torch.log(sumexp_N)

        t_local = target_N - vocab_start
        mine = (t_local >= 0) & (t_local < v)
        t_safe = t_local.clamp(0, v - 1)
        l_t = masked.gather(-1, t_safe[:, None]).squeeze(-1)
        l_t = _sum_over_tp(torch.where(mine, l_t, torch.zeros_like(l_t)), tp)
        nll_N = -conf_N * (l_t - lse_N)

        shifted = masked - lse_N[:, None]
        if allowed_Nv is not None:
            shifted = shifted.masked_fill(~allowed_Nv, 0.0)
        smooth_N = -conf_N * _sum_over_tp(shifted.sum(-1), tp)
        n_allowed_N = (torch.full_like(lse_N, v) if allowed_Nv is None else allowed_Nv.sum(-1).float())
        n_allowed_N = _sum_over_tp(n_allowed_N, tp)

        probs.div_(sumexp_N[:, None])
        ctx.save_for_backward(probs, t_safe, mine, conf_N, n_allowed_N,
                              allowed_Nv if allowed_Nv is not None else torch.empty(0))
        ctx.has_allowed = allowed_Nv is not None
        ctx.mark_non_differentiable(n_allowed_N)
        return nll_N, smooth_N, n_allowed_N

    @staticmethod
    def backward(ctx, g_nll_N, g_smooth_N, _g_n):
        probs, t_safe, mine, conf_N, n_allowed_N, allowed = ctx.saved_tensors
        # grad = c * (g_nll (p - onehot_t) + g_smooth (|A| p - 1_A))
        grad = probs * (conf_N * (g_nll_N + g_smooth_N * n_allowed_N))[:, None]
        in_a = allowed.to(grad.dtype) if ctx.has_allowed else torch.ones_like(grad)
        grad -= in_a * (conf_N * g_smooth_N)[:, None]
        onehot = (conf_N * g_nll_N * mine.to(grad.dtype))[:, None]
        grad.scatter_add_(-1, t_safe[:, None], -onehot)
        return grad, None, None, None, None, None


def vocab_parallel_label_smoothed_cross_entropy(
        logits_BTv, target_BT, conf_B=None, *, tp: TPContext, options: LossOptions = LossOptions(),
        constraint_masks_BTV=None, pad: int = 1, eos: int = 2, update_num: int = 0,
        valid_vocab_size: int | None = None) -> LossOutput:
    """Same contract as ``label_smoothed_cross_entropy``; ``logits_BTv`` is this rank's vocab
    slice ``[rank * V/tp, (rank+1) * V/tp)``. ``constraint_masks_BTV`` may be given over the
    full vocabulary (sliced here) or already sliced."""
    v = logits_BTv.shape[-1]
    V = v * tp.size
    start = tp.rank * v
    logits = logits_BTv.float()
    B, T = target_BT.shape

    allowed = None  # [B|1, T|1, v]
    if constraint_masks_BTV is not None:
        allowed = constraint_masks_BTV.bool()
        if allowed.shape[-1] == V and tp.size > 1:
            allowed = allowed.narrow(-1, start, v)
        elif allowed.shape[-1] != v:
            raise ValueError(f"constraint mask last dim {allowed.shape[-1]} is neither the vocab {V} nor "
                             f"the local slice {v}")
    ids = torch.arange(start, start + v, device=logits.device)
    if options.constraint_range is not None:
        lo, hi = options.constraint_range
        in_range = (ids < 4) | ((ids >= lo) & (ids < hi))
        allowed = in_range[None, None] if allowed is None else allowed & in_range
    if valid_vocab_size is not None and valid_vocab_size < V:
        real = ids < valid_vocab_size
        allowed = real[None, None] if allowed is None else allowed & real

    target = target_BT
    conf = (torch.ones(B, device=logits.device) if conf_B is None else conf_B.float())[:, None].expand(B, T)
    if options.ignore_prefix_size:
        n = options.ignore_prefix_size
        logits, target, conf = logits[:, n:], target[:, n:], conf[:, n:]
        if allowed is not None and allowed.shape[1] > 1:
            allowed = allowed[:, n:]
    keep = target.ne(pad)
    if options.ignore_eos:
        keep = keep & target.ne(eos)
    rows = logits[keep]  # [N, v]
    if allowed is not None:
        allowed = allowed.expand(logits.shape)[keep]
    nll, smooth, n_allowed = _VocabParallelSmoothedNLL.apply(rows, target[keep], conf[keep].contiguous(),
                                                             allowed, start, tp)
    eps_i = None
    if options.label_smoothing > 0:
        eps_i = smoothing_weight(options.label_smoothing, V, None if allowed is None else n_allowed,
                                 from_mask=constraint_masks_BTV is not None)
    # Token losses are identical on every TP rank, so drop-worst keeps the same tokens everywhere.
    return finish_loss(nll, smooth, eps_i, options, update_num)


def gather_vocab_logits(logits_BTv: torch.Tensor, tp: TPContext) -> torch.Tensor:
    """Full logits [B, T, V] from the vocab slices (generation and tests; differentiable)."""
    return gather_from_tp(logits_BTv, tp, -1)
