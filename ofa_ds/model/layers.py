"""Transformer building blocks of OFA (single-device code).

Shape legend: B batch, T/L sequence, d model width, H heads, D head dim, F FFN width.
Tensors are batch-first [B, T, d] throughout (upstream is time-major; the math is the same).

Head counts are never stored: every reshape uses ``view(B, T, -1, head_dim)``, so a
tensor-parallel plan can swap the projections for column/row-parallel ones (each rank
then sees H/tp heads) without touching this file.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa_ds import kernels
from ofa_ds.kernels import attention as attention_kernel
from ofa_ds.kernels.elementwise import gelu_fp32  # noqa: F401  (re-exported; used by callers)


def drop_path_rates(rate: float, n: int) -> list[float]:
    """Linear ramp 0 .. rate over n layers (plain Python: works under a meta-device context)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def layer_norm(dim: int) -> nn.Module:
    """eps 1e-5 LayerNorm; the implementation (torch or apex) is chosen in ofa_ds.kernels."""
    return kernels.layer_norm(dim, eps=1e-5)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x.div(keep) * (mask + keep).floor_()

    def extra_repr(self) -> str:
        return f"p={self.p}"


def split_heads(x_BTd: torch.Tensor, head_dim: int) -> torch.Tensor:
    B, T, _ = x_BTd.shape
    return x_BTd.view(B, T, -1, head_dim).transpose(1, 2)  # [B, H, T, D]


class OFAAttention(nn.Module):
    """Multi-head attention that takes an additive position bias.

    ``scale`` is applied to the projected queries (bias included), which is what makes the
    (head_dim * attn_scale_factor) ** -0.5 convention of OFA exact.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, attn_scale_factor: float,
                 dropout: float, scale_heads: bool):
        super().__init__()
        self.head_dim = embed_dim // num_heads
        self.scale = (self.head_dim * attn_scale_factor) ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None

    def forward(self, query_BTd, key_value_BSd=None, *, bias=None, key_padding_mask=None,
                causal=False, cache: dict | None = None, static_kv=False):
        """``cache`` (incremental decoding): self-attention appends this step's K/V to
        ``cache['k'/'v']``; with ``static_kv`` (cross-attention) K/V are computed once."""
        q = split_heads(self.q_proj(query_BTd) * self.scale, self.head_dim)
        kv_in = query_BTd if key_value_BSd is None else key_value_BSd
        if cache is not None and static_kv and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k = split_heads(self.k_proj(kv_in), self.head_dim)
            v = split_heads(self.v_proj(kv_in), self.head_dim)
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        out = attention_kernel(q, k, v, bias, key_padding_mask, causal,
                               self.dropout, self.training)  # [B, H, Tq, D]
        if self.c_attn is not None:
            out = out * self.c_attn[None, :, None, None].to(out.dtype)
        B, _, Tq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, -1))


def _ffn(layer, x):
    if getattr(layer, "moe", None) is not None:  # set by ofa_ds.model.moe.apply_moe
        return layer.moe(x)
    y = kernels.bias_gelu(layer.fc1(x))  # gelu_fp32, possibly fused
    y = F.dropout(y, p=layer.activation_dropout, training=layer.training)
    if layer.ffn_layernorm is not None:
        y = layer.ffn_layernorm(y)
    return layer.fc2(y)


class _Sublayers(nn.Module):
    """Shared residual plumbing of encoder and decoder layers (pre- or post-norm)."""

    def _init_ffn_and_residual(self, cfg, drop_path: float) -> None:
        """The FFN and residual parts both layer kinds share (checkpoint names included)."""
        d = cfg.embed_dim
        self.fc1 = nn.Linear(d, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, d)
        self.ffn_layernorm = layer_norm(cfg.ffn_dim) if cfg.scale_fc else None
        self.activation_dropout = cfg.activation_dropout
        self.final_layer_norm = layer_norm(d)
        self.w_resid = nn.Parameter(torch.ones(d)) if cfg.scale_resids else None
        self.drop_path = DropPath(drop_path)

    def _residual(self, x, branch, pre_norm: nn.Module, mid_norm: nn.Module | None):
        residual = x
        y = pre_norm(x) if self.normalize_before else x
        y = branch(y)
        if mid_norm is not None:
            y = mid_norm(y)
        if self.w_resid is not None:
            residual = residual * self.w_resid
        # residual + drop_path(dropout(y)), possibly fused
        x = kernels.dropout_add(y, residual, self.dropout, self.training, self.drop_path)
        return x if self.normalize_before else pre_norm(x)

    def _ffn_block(self, x):
        return self._residual(x, lambda y: _ffn(self, y), self.final_layer_norm, None)


class EncoderLayer(_Sublayers):
    def __init__(self, cfg, drop_path: float):
        super().__init__()
        d = cfg.embed_dim
        self.normalize_before = cfg.normalize_before
        self.dropout = cfg.dropout
        self.self_attn = OFAAttention(d, cfg.encoder_heads, attn_scale_factor=cfg.attn_scale_factor,
                                      dropout=cfg.attention_dropout, scale_heads=cfg.scale_heads)
        self.self_attn_layer_norm = layer_norm(d)
        self.attn_ln = layer_norm(d) if cfg.scale_attn else None
        self._init_ffn_and_residual(cfg, drop_path)

    def forward(self, x_BLd, padding_mask_BL, bias_BHLL):
        attn = lambda y: self.self_attn(y, bias=bias_BHLL, key_padding_mask=padding_mask_BL)
        x = self._residual(x_BLd, attn, self.self_attn_layer_norm, self.attn_ln)
        return self._ffn_block(x)


class DecoderLayer(_Sublayers):
    def __init__(self, cfg, drop_path: float):
        super().__init__()
        d = cfg.embed_dim
        self.normalize_before = cfg.normalize_before
        self.dropout = cfg.dropout
        attn_kwargs = dict(attn_scale_factor=cfg.attn_scale_factor, dropout=cfg.attention_dropout,
                           scale_heads=cfg.scale_heads)
        self.self_attn = OFAAttention(d, cfg.decoder_heads, **attn_kwargs)
        self.self_attn_layer_norm = layer_norm(d)
        self.self_attn_ln = layer_norm(d) if cfg.scale_attn else None
        self.encoder_attn = OFAAttention(d, cfg.decoder_heads, **attn_kwargs)
        self.encoder_attn_layer_norm = layer_norm(d)
        self.cross_attn_ln = layer_norm(d) if cfg.scale_attn else None
        self._init_ffn_and_residual(cfg, drop_path)

    def forward(self, x_BTd, encoder_out_BLd, encoder_padding_mask_BL, self_padding_mask_BT,
                self_bias_BHTT, cross_bias_BHTL, cache: dict | None = None):
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = cache.setdefault("self", {})
            cross_cache = cache.setdefault("cross", {})
        self_attn = lambda y: self.self_attn(
            y, bias=self_bias_BHTT, key_padding_mask=self_padding_mask_BT,
            causal=True, cache=self_cache)
        x = self._residual(x_BTd, self_attn, self.self_attn_layer_norm, self.self_attn_ln)
        cross_attn = lambda y: self.encoder_attn(
            y, encoder_out_BLd, bias=cross_bias_BHTL, key_padding_mask=encoder_padding_mask_BL,
            cache=cross_cache, static_kv=True)
        x = self._residual(x, cross_attn, self.encoder_attn_layer_norm, self.cross_attn_ln)
        return self._ffn_block(x)
