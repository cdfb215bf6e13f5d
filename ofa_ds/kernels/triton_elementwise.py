"""Triton versions of bias+GELU and bias+dropout+residual, with their backward passes.

Both work on the flattened tensor (the bias broadcasts over the last dim). Arithmetic is
float32 in registers, one rounding to the output dtype. Compared with the eager ops:

* bias_gelu saves only its (bf16) input for backward instead of a float32 copy, and skips
  the float32 round trip through memory;
* bias_dropout_add never materialises the dropout mask: forward draws it from Philox with
  a seed taken from torch's CPU generator (so ``torch.manual_seed`` and activation
  checkpointing's RNG replay make it reproducible) and backward regenerates it. Its random
  stream differs from ``F.dropout``'s, so parity with the eager op is exact only in
  distribution; the tests check the mask is consistent between forward and backward.

Element offsets are 32-bit; tensors of 2**31 elements or more are rejected.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ofa_ds.kernels.backends import interpreting

_BLOCK = 1024
_MAX_NUMEL = 2**31 - 1
# Kernel constants must be tl.constexpr globals (plain floats only work in the interpreter).
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _bias_gelu_fwd(x_ptr, b_ptr, y_ptr, n, N, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    z = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + offs % N, mask=inside, other=0.0).to(tl.float32)
    y = 0.5 * z * (1.0 + tl.erf(z * _SQRT1_2))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _bias_gelu_bwd(dy_ptr, x_ptr, b_ptr, dz_ptr, n, N, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    z = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + offs % N, mask=inside, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(z * _SQRT1_2))
    pdf = tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
    tl.store(dz_ptr + offs, (dy * (cdf + z * pdf)).to(dz_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _bias_dropout_add_fwd(x_ptr, b_ptr, r_ptr, s_ptr, out_ptr, n, N, per_sample, p, seed,
                          HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, DROPOUT: tl.constexpr,
                          BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    y = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs % N, mask=inside, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(seed, offs) >= p
        y = tl.where(keep, y / (1.0 - p), 0.0)
    if HAS_SCALE:
        y *= tl.load(s_ptr + offs // per_sample, mask=inside, other=0.0)
    r = tl.load(r_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (r + y).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _bias_dropout_add_bwd(dout_ptr, s_ptr, dx_ptr, n, per_sample, p, seed,
                          HAS_SCALE: tl.constexpr, DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    g = tl.load(dout_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(seed, offs) >= p
        g = tl.where(keep, g / (1.0 - p), 0.0)
    if HAS_SCALE:
        g *= tl.load(s_ptr + offs // per_sample, mask=inside, other=0.0)
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=inside)


def _grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


def _check(x: torch.Tensor) -> None:
    if x.numel() > _MAX_NUMEL:
        raise ValueError(f"tensor of {x.numel()} elements exceeds the 32-bit offsets of these kernels")
    if not (x.is_cuda or interpreting()):
        raise RuntimeError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for tests)")


def _bias_grad(dz: torch.Tensor, bias: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
    if bias is None or not needed:
        return None
    return dz.reshape(-1, bias.numel()).sum(0, dtype=torch.float32).to(bias.dtype).view(bias.shape)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        x = x.contiguous()
        _check(x)
        y = torch.empty_like(x)
        n, N = x.numel(), x.shape[-1]
        _bias_gelu_fwd[_grid(n)](x, bias if bias is not None else x, y, n, N,
                                 HAS_BIAS=bias is not None, BLOCK=_BLOCK)
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dy = dy.contiguous()
        dz = torch.empty_like(x)
        n, N = x.numel(), x.shape[-1]
        _bias_gelu_bwd[_grid(n)](dy, x, bias if bias is not None else x, dz, n, N,
                                 HAS_BIAS=bias is not None, BLOCK=_BLOCK)
        return dz, _bias_grad(dz, bias, ctx.needs_input_grad[1])


class _BiasDropoutAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, p, scale):
        x, residual = x.contiguous(), residual.contiguous()
        _check(x)
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} and branch {tuple(x.shape)} differ")
        out = torch.empty_like(residual)
        n, N = x.numel(), x.shape[-1]
        per_sample = n // x.shape[0]
        # A fresh seed per call from torch's CPU generator; only the seed is saved.
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if p > 0 else 0
        scale = None if scale is None else scale.to(device=x.device, dtype=torch.float32).contiguous()
        _bias_dropout_add_fwd[_grid(n)](
            x, bias if bias is not None else x, residual, scale if scale is not None else x, out,
            n, N, per_sample, float(p), seed,
            HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, DROPOUT=p > 0, BLOCK=_BLOCK)
        ctx.p, ctx.seed, ctx.per_sample = p, seed, per_sample
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        (scale,) = ctx.saved_tensors
        dout = dout.contiguous()
        dx = torch.empty(dout.shape, dtype=ctx.x_dtype, device=dout.device)
        n = dout.numel()
        _bias_dropout_add_bwd[_grid(n)](
            dout, scale if scale is not None else dout, dx, n, ctx.per_sample, float(ctx.p), ctx.seed,
            HAS_SCALE=scale is not None, DROPOUT=ctx.p > 0, BLOCK=_BLOCK)
        dbias = None
        if ctx.needs_input_grad[1]:
            N = ctx.bias_shape.numel()
            dbias = dx.reshape(-1, N).sum(0, dtype=torch.float32).to(ctx.bias_dtype).view(ctx.bias_shape)
        return dx, dbias, dout, None, None


def bias_gelu_triton(x_BTF: torch.Tensor, bias_F: torch.Tensor | None = None) -> torch.Tensor:
    return _BiasGelu.apply(x_BTF, bias_F)


def bias_dropout_add_triton(x_BTd, bias_d, residual_BTd, p: float, training: bool,
                            sample_scale_B: torch.Tensor | None = None):
    p = float(p) if training else 0.0
    if p == 0.0 and sample_scale_B is None and bias_d is None:
        return residual_BTd + x_BTd  # nothing to fuse
    return _BiasDropoutAdd.apply(x_BTd, bias_d, residual_BTd, p, sample_scale_B)
