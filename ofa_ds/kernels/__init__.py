"""One place that picks kernel implementations.

Model code calls the functions below (``attention``, ``layer_norm``, ``bias_gelu``,
``dropout_add``); which implementation runs is decided by ``ofa_ds.kernels.registry``,
per device type, once, and logged. Defaults: the plain PyTorch path on CPU (the parity
reference), fused paths on CUDA (SDPA attention, Triton GELU and dropout+residual, apex
LayerNorm when NVIDIA apex is importable). ``set_impl(op, name)`` / ``configure({...})``
override from config or tests; ``ofa-ds env`` prints the result.

| op               | implementations                  | auto on cuda      | auto on cpu |
|------------------|----------------------------------|-------------------|-------------|
| attention        | reference, sdpa, triton          | sdpa              | reference   |
| layer_norm       | torch, apex                      | apex, else torch  | torch       |
| bias_gelu        | eager, triton                    | triton            | eager       |
| bias_dropout_add | eager, triton                    | triton            | eager       |
| rel_pos_bias     | embedding, gather                | gather            | embedding   |

The optimizer choice (``optimizer_choice``) and the training wrappers
(``apply_activation_checkpointing``, ``maybe_compile``) live here too, because they are
the same kind of decision: a faster path that must not change the numbers.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds.kernels import registry
from ofa_ds.kernels.attention import reference_attention, sdpa_attention
from ofa_ds.kernels.elementwise import (bias_dropout_add_eager, bias_gelu_eager, drop_path_scale,
                                        gelu_fp32)
from ofa_ds.kernels.optim import optimizer_choice
from ofa_ds.kernels.relative_bias import embedding_bias, gather_bias
from ofa_ds.kernels.backends import apex_unavailable, default_device_type, triton_unavailable
from ofa_ds.kernels.registry import Impl, always, configure, describe, set_impl
from ofa_ds.kernels.wrap import apply_activation_checkpointing, maybe_compile

logger = logging.getLogger(__name__)

__all__ = [
    "attention", "layer_norm", "bias_gelu", "bias_dropout_add", "dropout_add", "gelu_fp32", "relative_bias",
    "set_impl", "configure", "describe", "active_impl", "set_attention_impl", "attention_impl",
    "optimizer_choice", "apply_activation_checkpointing", "maybe_compile",
]


def _load_triton_attention():
    from ofa_ds.kernels.triton_attention import triton_attention

    warned = []

    def run(q, k, v, bias=None, key_padding_mask=None, causal=False, dropout_p=0.0, training=False):
        if dropout_p > 0.0 and training:
            # The Triton kernel has no attention dropout (OFA trains with attention_dropout=0).
            if not warned:
                logger.warning("triton attention: dropout_p=%s in training, using sdpa for these calls",
                               dropout_p)
                warned.append(True)
            return sdpa_attention(q, k, v, bias, key_padding_mask, causal, dropout_p, training)
        return triton_attention(q, k, v, bias, key_padding_mask, causal)

    return run


def _load_apex_layer_norm():
    from apex.normalization import FusedLayerNorm

    return FusedLayerNorm


def _load_triton(name):
    def load():
        from ofa_ds.kernels import triton_elementwise

        return getattr(triton_elementwise, name)

    return load


registry.register_op("attention", [
    Impl("reference", lambda: reference_attention, always,
         "matmul + bias + masks, float32 softmax (upstream order of operations)"),
    Impl("sdpa", lambda: sdpa_attention, always,
         "F.scaled_dot_product_attention with the bias and masks as one additive float mask"),
    Impl("triton", _load_triton_attention, triton_unavailable,
         "our flash attention with an additive bias input and dBias (ofa_ds/kernels/triton_attention.py)"),
], preference={"cuda": ("sdpa", "reference"), "default": ("reference",)})

registry.register_op("layer_norm", [
    Impl("torch", lambda: nn.LayerNorm, always, "torch.nn.LayerNorm (native fused CUDA kernel upstream)"),
    Impl("apex", _load_apex_layer_norm, apex_unavailable, "NVIDIA apex FusedLayerNorm, as fairseq OFA used"),
], preference={"cuda": ("apex", "torch"), "default": ("torch",)})

registry.register_op("bias_gelu", [
    Impl("eager", lambda: bias_gelu_eager, always, "x + bias, float32 erf GELU, cast back"),
    Impl("triton", _load_triton("bias_gelu_triton"), triton_unavailable,
         "one Triton pass forward and backward; saves only the input"),
], preference={"cuda": ("triton", "eager"), "default": ("eager",)})

registry.register_op("bias_dropout_add", [
    Impl("eager", lambda: bias_dropout_add_eager, always, "residual + drop_path(dropout(x + bias))"),
    Impl("triton", _load_triton("bias_dropout_add_triton"), triton_unavailable,
         "one Triton pass; Philox mask regenerated in backward, never stored"),
], preference={"cuda": ("triton", "eager"), "default": ("eager",)})

registry.register_op("rel_pos_bias", [
    Impl("embedding", lambda: embedding_bias, always, "F.embedding (its CUDA backward sorts the bucket ids)"),
    Impl("gather", lambda: gather_bias, always,
         "index_select with an index_add_ backward: no sort (ofa_ds/kernels/relative_bias.py)"),
], preference={"cuda": ("gather", "embedding"), "default": ("embedding",)})


# -- model-facing entry points ---------------------------------------------------------
def attention(q_BHqD, k_BHkD, v_BHkD, bias_BHqk=None, key_padding_mask_Bk=None, causal=False,
              dropout_p=0.0, training=False):
    """Attention with OFA's additive bias; queries pre-scaled. Returns [B, H, Tq, D]."""
    fn = registry.get("attention", q_BHqD.device.type)
    return fn(q_BHqD, k_BHkD, v_BHkD, bias_BHqk, key_padding_mask_Bk, causal, dropout_p, training)


def relative_bias(table: nn.Module, buckets: torch.Tensor) -> torch.Tensor:
    """Rows of a relative-position table (an ``Embedding(buckets, H)``-like module) by bucket
    id: [..., H]."""
    return registry.get("rel_pos_bias", table.weight.device.type)(table.weight, buckets)


def layer_norm(dim: int, eps: float = 1e-5) -> nn.Module:
    """A LayerNorm module (parameters ``weight``/``bias`` whatever the implementation)."""
    return registry.get("layer_norm", default_device_type())(dim, eps=eps)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """gelu_fp32(x + bias)."""
    return registry.get("bias_gelu", x.device.type)(x, bias)


def bias_dropout_add(x, bias, residual, p: float, training: bool, sample_scale=None):
    """residual + sample_scale * dropout(x + bias); sample_scale is per sample ([B]) or None."""
    return registry.get("bias_dropout_add", x.device.type)(x, bias, residual, p, training, sample_scale)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool,
                drop_path: nn.Module) -> torch.Tensor:
    """The end of every residual branch: ``residual + drop_path(dropout(x))``.

    The eager path is literally that expression (bit-identical to the unfused model); the
    fused path draws drop path's per-sample factors itself and does the rest in one pass.
    """
    name, _ = registry.resolve("bias_dropout_add", x.device.type)
    if name == "eager":
        return residual + drop_path(F.dropout(x, p=p, training=training))
    scale = drop_path_scale(getattr(drop_path, "p", 0.0), training, x)
    return registry.get("bias_dropout_add", x.device.type)(x, None, residual, p, training, scale)


# -- introspection and overrides -------------------------------------------------------
def active_impl(op: str, device_type: str | None = None) -> str:
    return registry.resolve(op, device_type or default_device_type())[0]


def set_attention_impl(name: str) -> None:
    """Shorthand for ``set_impl("attention", name)`` ("auto" restores the per-device choice)."""
    set_impl("attention", name)


def attention_impl(device_type: str | None = None) -> str:
    return active_impl("attention", device_type)
