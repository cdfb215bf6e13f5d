"""Relative-position bias lookup: rows of a per-layer ``[buckets, heads]`` table by bucket id.

The reference is ``F.embedding``. Its CUDA backward (``embedding_dense_backward``) sorts the
indices on every call so that it can sum duplicate rows without atomics; OFA's image buckets
repeat heavily (B x N x N lookups into 6892 rows), and on the H200 profile that sort cost
~12 ms per step over the per-layer tables. ``gather_bias`` is the same forward as an
``index_select`` with a backward that is one ``index_add_`` (a scatter-add, no sort).

Numerics: the forward is a copy either way (bitwise equal). The backward sums the same
values per row; on CPU both sum in index order (equal in fp32 to rounding of the order,
tested within 1e-6); on CUDA ``index_add_`` uses atomics, so the order, and the last bit,
varies run to run. Under ``torch.use_deterministic_algorithms(True)`` the gather falls back
to the embedding path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_bias(weight_RH: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """``weight[buckets]`` via ``F.embedding``: [..., H]."""
    return F.embedding(buckets, weight_RH)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight_RH, buckets):
        flat = buckets.reshape(-1)
        ctx.save_for_backward(flat)
        ctx.rows = weight_RH.shape[0]
        return weight_RH.index_select(0, flat).view(*buckets.shape, weight_RH.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (flat,) = ctx.saved_tensors
        H = grad.shape[-1]
        grad_weight = grad.new_zeros(ctx.rows, H)
        grad_weight.index_add_(0, flat, grad.reshape(-1, H))
        return grad_weight, None


def gather_bias(weight_RH: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """``weight[buckets]`` with a scatter-add backward (no sort): [..., H]."""
    if torch.are_deterministic_algorithms_enabled() and weight_RH.device.type == "cuda":
        return embedding_bias(weight_RH, buckets)
    if not (torch.is_grad_enabled() and weight_RH.requires_grad):
        return weight_RH.index_select(0, buckets.reshape(-1)).view(*buckets.shape, weight_RH.shape[1])
    return _GatherRows.apply(weight_RH, buckets)
