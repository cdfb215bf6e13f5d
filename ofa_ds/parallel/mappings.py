"""The four crossings of the tensor-parallel region, plus the all-reduce that a sharded
LayerNorm needs, each a small autograd function.

Vocabulary (the Megatron one, spec parallelism.md §3.2):

=====================  ======================  ======================  =========================
function               forward                 backward                used at
=====================  ======================  ======================  =========================
``copy_to_tp``         identity                all-reduce (sum)        input of a column linear
``reduce_from_tp``     all-reduce (sum)        identity                output of a row linear,
                                                                       vocab embedding, loss sums
``scatter_to_tp``      keep own chunk of dim   all-gather along dim    entering a sharded dim
``gather_from_tp``     all-gather along dim    keep own chunk of dim   leaving it (full logits)
``all_reduce_tp``      all-reduce (sum)        all-reduce (sum)        partial sums that feed
                                                                       every rank's *sharded*
                                                                       output (distributed LN)
=====================  ======================  ======================  =========================

Why two all-reduces: after ``reduce_from_tp`` everything is replicated, so every rank
back-propagates the same gradient and summing it again would count it ``tp`` times. The
LayerNorm statistics are different: each rank's gradient w.r.t. the shared mean/variance
comes only from its own slice of the output, so the true gradient is their sum.

Every function is the identity when ``tp.size == 1``. ``tp`` is a ``TPContext``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ofa_ds.parallel.groups import TPContext


def _all_reduce(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=tp.group)
    return x


def _gather(x: torch.Tensor, tp: TPContext, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(tp.size)]
    dist.all_gather(parts, x.contiguous(), group=tp.group)
    return torch.cat(parts, dim=dim)


def _chunk(x: torch.Tensor, tp: TPContext, dim: int) -> torch.Tensor:
    size = x.shape[dim]
    if size % tp.size:
        raise ValueError(f"dim {dim} of size {size} does not split over {tp.size} ranks")
    return x.narrow(dim, tp.rank * (size // tp.size), size // tp.size).contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.tp), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        return _all_reduce(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllReduceTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _all_reduce(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.tp), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp, dim):
        ctx.tp, ctx.dim = tp, dim
        return _chunk(x, tp, dim)

    @staticmethod
    def backward(ctx, grad):
        return _gather(grad, ctx.tp, ctx.dim), None, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp, dim):
        ctx.tp, ctx.dim = tp, dim
        return _gather(x, tp, dim)

    @staticmethod
    def backward(ctx, grad):
        return _chunk(grad, ctx.tp, ctx.dim), None, None


def copy_to_tp(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    return x if tp.size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    return x if tp.size == 1 else _ReduceFromTP.apply(x, tp)


def all_reduce_tp(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    return x if tp.size == 1 else _AllReduceTP.apply(x, tp)


def scatter_to_tp(x: torch.Tensor, tp: TPContext, dim: int = -1) -> torch.Tensor:
    return x if tp.size == 1 else _ScatterToTP.apply(x, tp, dim % x.dim())


def gather_from_tp(x: torch.Tensor, tp: TPContext, dim: int = -1) -> torch.Tensor:
    return x if tp.size == 1 else _GatherFromTP.apply(x, tp, dim % x.dim())


def max_over_tp(x: torch.Tensor, tp: TPContext) -> torch.Tensor:
    """Element-wise max over the TP group, no gradient (used for the softmax shift)."""
    if tp.size == 1:
        return x
    x = x.detach().contiguous().clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=tp.group)
    return x
