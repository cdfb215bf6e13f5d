"""Tensor-parallel layers for OFA.

Each layer holds the ``tp.rank``-th shard of a full-size parameter and records how it is
split, on the module (``partition_dim``, ``full_shape``) and on every sharded parameter
(``tensor_model_parallel=True``, ``partition_dim``, ``partition_stride=1``; DeepSpeed reads
the first attribute to count the parameter on every TP rank in the gradient norm, our
checkpoint tools read the others). Replicated parameters carry no attribute.

=========================  =================  ============================================
layer                      split              communication (see ``mappings``)
=========================  =================  ============================================
ColumnParallelLinear       out-features       copy_to_tp on the input
RowParallelLinear          in-features        reduce_from_tp on the output; bias replicated,
                                              added after the reduction
VocabParallelEmbedding     vocab rows         mask foreign ids, reduce_from_tp
VocabParallelHead          (tied to ^)        copy_to_tp on the input; logits stay sharded
HeadParallelEmbedding      columns (= heads)  none: each rank looks up its own heads
ShardedLayerNorm           normalized dim     all_reduce_tp of the sum and squared sum
``shard_parameter``        any dim            none (e.g. the per-head gains ``c_attn``)
=========================  =================  ============================================

``from_module`` constructors copy the right shard out of an existing single-device module
(meta tensors stay meta), which is how ``plan.apply_tensor_parallel`` parallelises a model
whose weights are already loaded.

Shape legend: B batch, T length, d width, F FFN width, V vocab, H heads, tp the degree.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds.parallel.groups import TPContext
from ofa_ds.parallel.mappings import all_reduce_tp, copy_to_tp, gather_from_tp, reduce_from_tp
from ofa_ds.parallel.random import sharded_dropout


def local_size(full: int, tp: TPContext, what: str) -> int:
    if full % tp.size:
        raise ValueError(f"{what}: size {full} does not split over tp={tp.size}")
    return full // tp.size


def shard_tensor(full: torch.Tensor, dim: int, tp: TPContext) -> torch.Tensor:
    """A contiguous copy of the ``tp.rank``-th chunk of ``full`` along ``dim``."""
    n = local_size(full.shape[dim], tp, f"tensor of shape {tuple(full.shape)} along dim {dim}")
    return full.detach().narrow(dim, tp.rank * n, n).clone()


def tag_sharded(param: nn.Parameter, partition_dim: int) -> nn.Parameter:
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = 1
    return param


def is_sharded(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def shard_parameter(param: nn.Parameter, dim: int, tp: TPContext) -> nn.Parameter:
    """A new parameter holding this rank's shard of ``param`` (e.g. ``c_attn`` [H] -> [H/tp])."""
    shard = nn.Parameter(shard_tensor(param, dim, tp), requires_grad=param.requires_grad)
    return tag_sharded(shard, dim)


def _new_param(shape, like: torch.Tensor | None, device=None, dtype=None) -> nn.Parameter:
    if like is not None:
        device, dtype = like.device, like.dtype
    return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))


class _TPModule(nn.Module):
    partition_dim: int = 0

    def _tp_repr(self) -> str:
        return f"tp_rank={self.tp.rank}/{self.tp.size}, partition_dim={self.partition_dim}, " \
               f"full_shape={tuple(self.full_shape)}"


class ColumnParallelLinear(_TPModule):
    """y[..., out/tp] = x W_r^T + b_r. The input must be replicated over the TP group."""

    partition_dim = 0

    def __init__(self, in_features: int, out_features: int, tp: TPContext, bias: bool = True,
                 gather_output: bool = False, device=None, dtype=None):
        super().__init__()
        self.tp, self.in_features, self.gather_output = tp, in_features, gather_output
        self.out_features = local_size(out_features, tp, "ColumnParallelLinear out_features")
        self.full_shape = (out_features, in_features)
        self.weight = tag_sharded(_new_param((self.out_features, in_features), None, device, dtype), 0)
        self.bias = tag_sharded(_new_param((self.out_features,), None, device, dtype), 0) if bias else None

    @classmethod
    def from_module(cls, linear: nn.Linear, tp: TPContext, **kwargs) -> "ColumnParallelLinear":
        new = cls(linear.in_features, linear.out_features, tp, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        with torch.no_grad():
            new.weight.copy_(shard_tensor(linear.weight, 0, tp))
            if linear.bias is not None:
                new.bias.copy_(shard_tensor(linear.bias, 0, tp))
        return new

    def forward(self, x):
        y = F.linear(copy_to_tp(x, self.tp), self.weight, self.bias)
        return gather_from_tp(y, self.tp, -1) if self.gather_output else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, {self._tp_repr()}"


class RowParallelLinear(_TPModule):
    """y = all_reduce(x_r W_r^T) + b for an input already split on its last dim.

    ``input_dropout``: dropout applied to the sharded input first (the plan moves OFA's
    FFN activation dropout here when there is no FFN LayerNorm), drawn with
    ``random.sharded_dropout`` so the mask does not depend on the TP degree.
    """

    partition_dim = 1

    def __init__(self, in_features: int, out_features: int, tp: TPContext, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.tp, self.out_features = tp, out_features
        self.in_features = local_size(in_features, tp, "RowParallelLinear in_features")
        self.full_shape = (out_features, in_features)
        self.input_dropout = 0.0
        self.weight = tag_sharded(_new_param((out_features, self.in_features), None, device, dtype), 1)
        self.bias = _new_param((out_features,), None, device, dtype) if bias else None  # replicated

    @classmethod
    def from_module(cls, linear: nn.Linear, tp: TPContext) -> "RowParallelLinear":
        new = cls(linear.in_features, linear.out_features, tp, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(shard_tensor(linear.weight, 1, tp))
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x):
        x = sharded_dropout(x, self.input_dropout, self.training, self.tp)
        y = reduce_from_tp(F.linear(x, self.weight), self.tp)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None} (replicated), input_dropout={self.input_dropout}, " \
               f"{self._tp_repr()}"


class VocabParallelEmbedding(_TPModule):
    """Rows [rank*V/tp, (rank+1)*V/tp) of the token table. Ids owned by another rank look
    up a zero vector here; the all-reduce assembles the full embedding."""

    partition_dim = 0

    def __init__(self, num_embeddings: int, embedding_dim: int, tp: TPContext, padding_idx: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.tp, self.embedding_dim, self.padding_idx = tp, embedding_dim, padding_idx
        self.num_embeddings = local_size(num_embeddings, tp, "vocabulary size")
        self.vocab_start = tp.rank * self.num_embeddings
        self.vocab_end = self.vocab_start + self.num_embeddings
        self.full_shape = (num_embeddings, embedding_dim)
        self.weight = tag_sharded(_new_param((self.num_embeddings, embedding_dim), None, device, dtype), 0)

    @classmethod
    def from_module(cls, emb: nn.Embedding, tp: TPContext) -> "VocabParallelEmbedding":
        new = cls(emb.num_embeddings, emb.embedding_dim, tp, padding_idx=emb.padding_idx,
                  device=emb.weight.device, dtype=emb.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(shard_tensor(emb.weight, 0, tp))
        return new

    @property
    def local_padding_idx(self) -> int | None:
        p = self.padding_idx
        return p - self.vocab_start if p is not None and self.vocab_start <= p < self.vocab_end else None

    def forward(self, ids):
        if self.tp.size == 1:
            return F.embedding(ids, self.weight, self.padding_idx)
        foreign = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(foreign, 0)
        out = F.embedding(local_ids, self.weight, self.local_padding_idx)
        return reduce_from_tp(out.masked_fill(foreign.unsqueeze(-1), 0.0), self.tp)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows=[{self.vocab_start}, {self.vocab_end}), " \
               f"padding_idx={self.padding_idx}, {self._tp_repr()}"


class VocabParallelHead(nn.Module):
    """The tied output projection: logits for this rank's vocab slice, [B, T, V/tp].

    Shares its ``weight`` Parameter with a ``VocabParallelEmbedding`` (tied like the
    single-device model). ``gather_output=True`` all-gathers full logits (generation);
    training keeps them sharded for the vocab-parallel loss.
    """

    partition_dim = 0

    def __init__(self, embedding: VocabParallelEmbedding, gather_output: bool = False):
        super().__init__()
        self.tp, self.gather_output = embedding.tp, gather_output
        self.vocab_start, self.vocab_end = embedding.vocab_start, embedding.vocab_end
        self.full_shape = embedding.full_shape
        self.weight = embedding.weight

    def forward(self, x):
        logits = F.linear(copy_to_tp(x, self.tp), self.weight)
        return gather_from_tp(logits, self.tp, -1) if self.gather_output else logits

    def extra_repr(self) -> str:
        return f"tied, rows=[{self.vocab_start}, {self.vocab_end}), gather_output={self.gather_output}, " \
               f"tp_rank={self.tp.rank}/{self.tp.size}, full_shape={tuple(self.full_shape)}"


class HeadParallelEmbedding(_TPModule):
    """A per-head bias table ``Embedding(buckets, H)`` keeping columns of this rank's heads."""

    partition_dim = 1

    def __init__(self, num_embeddings: int, num_heads: int, tp: TPContext, device=None, dtype=None):
        super().__init__()
        self.tp, self.num_embeddings = tp, num_embeddings
        self.embedding_dim = local_size(num_heads, tp, "attention heads")
        self.full_shape = (num_embeddings, num_heads)
        self.weight = tag_sharded(_new_param((num_embeddings, self.embedding_dim), None, device, dtype), 1)

    @classmethod
    def from_module(cls, emb: nn.Embedding, tp: TPContext) -> "HeadParallelEmbedding":
        new = cls(emb.num_embeddings, emb.embedding_dim, tp, device=emb.weight.device, dtype=emb.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(shard_tensor(emb.weight, 1, tp))
        return new

    def forward(self, idx):
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._tp_repr()}"


class ShardedLayerNorm(_TPModule):
    """LayerNorm over a last dim that is split over the TP group (OFA's ``ffn_layernorm``
    over F after the column-parallel ``fc1``): mean and variance come from all-reduced
    partial sums, so the output equals the full LayerNorm's slice.

    Statistics are computed in float32 in two passes (mean, then centred squares) for
    stability; ``input_dropout`` is the FFN activation dropout moved here by the plan.
    """

    partition_dim = 0

    def __init__(self, normalized_size: int, tp: TPContext, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.tp, self.eps = tp, eps
        self.local_size = local_size(normalized_size, tp, "ShardedLayerNorm size")
        self.full_shape = (normalized_size,)
        self.input_dropout = 0.0
        self.weight = tag_sharded(_new_param((self.local_size,), None, device, dtype), 0)
        self.bias = tag_sharded(_new_param((self.local_size,), None, device, dtype), 0)

    @classmethod
    def from_module(cls, ln: nn.LayerNorm, tp: TPContext) -> "ShardedLayerNorm":
        if len(ln.normalized_shape) != 1 or not ln.elementwise_affine or ln.bias is None:
            raise ValueError(f"ShardedLayerNorm replaces a 1-d affine LayerNorm with bias, got {ln}")
        new = cls(ln.normalized_shape[0], tp, eps=ln.eps, device=ln.weight.device, dtype=ln.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(shard_tensor(ln.weight, 0, tp))
            new.bias.copy_(shard_tensor(ln.bias, 0, tp))
        return new

    def forward(self, x):
        x = sharded_dropout(x, self.input_dropout, self.training, self.tp)
        n = self.full_shape[0]
        xf = x.float()
        mean = all_reduce_tp(xf.sum(-1, keepdim=True), self.tp) / n
        centred = xf - mean
        var = all_reduce_tp(centred.square().sum(-1, keepdim=True), self.tp) / n
        y = centred * torch.rsqrt(var + self.eps)
        return (y * self.weight.float() + self.bias.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.local_size}, eps={self.eps}, input_dropout={self.input_dropout}, {self._tp_repr()}"
