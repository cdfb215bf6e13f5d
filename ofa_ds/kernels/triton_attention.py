"""Flash attention with OFA's additive bias, in Triton (forward and backward).

Shape legend: B batch, H heads, Tq/Tk query/key lengths, D head dim.

Same contract as ``reference_attention``: queries arrive already multiplied by the
attention scale; scores = q·kᵀ + bias, keys above the causal diagonal and padded keys get
-inf, softmax over keys, times V. Differences, all by design:

* scores, softmax and accumulators stay in float32 registers (the reference rounds the
  scores to the activation dtype before its float32 softmax), so in bf16 this kernel is
  closer to the float32 result than the reference is;
* the probabilities are never stored: backward recomputes them from the saved row
  log-sum-exp (FlashAttention-2 style). dK/dV come from one kernel looping over query
  blocks and dQ (plus dBias, when the bias needs a gradient) from a second one looping
  over key blocks, so there are no atomics and results are deterministic;
* a query row whose keys are all masked returns 0 (the reference returns NaN);
* no attention dropout: callers route ``dropout_p > 0`` in training to another path.

The bias may broadcast over batch and heads ([1|B, 1|H, Tq, Tk]); its gradient is a
float32 [B, H, Tq, Tk] buffer summed back to the bias's shape, which costs as much memory
as a full bias does anyway.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ofa_ds.kernels.backends import interpreting


@triton.jit
def _scores(q, k, bias_ptrs, pad_ptrs, offs_m, offs_n, Tq, Tk, causal_offset,
            HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr,
            PRECISION: tl.constexpr):
    """Masked float32 scores [BLOCK_M, BLOCK_N] of q [M, D] against k given as [D, N]."""
    s = tl.dot(q, k, input_precision=PRECISION)
    if HAS_BIAS:
        in_tile = (offs_m[:, None] < Tq) & (offs_n[None, :] < Tk)
        s += tl.load(bias_ptrs, mask=in_tile, other=0.0).to(tl.float32)
    valid = offs_n[None, :] < Tk
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
    if HAS_PAD:
        is_pad = tl.load(pad_ptrs, mask=offs_n < Tk, other=1)
        valid = valid & (is_pad == 0)[None, :]
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _fwd_kernel(Q, K, V, BIAS, PAD, O, LSE,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                sbb, sbh, sbm, sbn, sob, soh, som, sod, spb,
                H, Tq, Tk, D, causal_offset,
                HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    arange_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Tq) & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = Tk
    if CAUSAL:
        hi = tl.minimum(Tk, (pid_m + 1) * BLOCK_M + causal_offset)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + arange_n
        n_ok = offs_n < Tk
        k = tl.load(K + b * skb + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                    mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = _scores(q, k, BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                    PAD + b * spb + offs_n, offs_m, offs_n, Tq, Tk, causal_offset,
                    HAS_BIAS, HAS_PAD, CAUSAL, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: avoid inf - inf
        alpha = tl.exp(m_i - m_use)
        p = tl.exp(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    m_ok = offs_m < Tq
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    # +inf for empty rows makes every recomputed probability exp(s - inf) = 0 in backward.
    lse = tl.where(empty, float("inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, BIAS, PAD, DO, LSE, DELTA, DK, DV,
                     sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd, spb,
                     H, Tq, Tk, D, causal_offset,
                     HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                     PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    arange_m = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D
    n_ok = offs_n < Tk

    kT = tl.load(K + b * skb + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # [D, N]
    vT = tl.load(V + b * svb + h * svh + offs_n[None, :] * svn + offs_d[:, None] * svd,
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # [D, N]
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    lo = 0
    if CAUSAL:
        lo = tl.maximum(0, pid_n * BLOCK_N - causal_offset)
        lo = (lo // BLOCK_M) * BLOCK_M
    for start_m in range(lo, Tq, BLOCK_M):
        offs_m = start_m + arange_m
        m_ok = offs_m < Tq
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * Tq + offs_m, mask=m_ok, other=0.0)
        s = _scores(q, kT, BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                    PAD + b * spb + offs_n, offs_m, offs_n, Tq, Tk, causal_offset,
                    HAS_BIAS, HAS_PAD, CAUSAL, PRECISION)
        p = tl.exp(s - lse[:, None])  # [M, N]
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    out_mask = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + pid_bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=out_mask)
    tl.store(DV + pid_bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=out_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, BIAS, PAD, DO, LSE, DELTA, DQ, DBIAS,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd, spb,
                   H, Tq, Tk, D, causal_offset,
                   HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                   BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    arange_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    m_ok = offs_m < Tq

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * Tq + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = Tk
    if CAUSAL:
        hi = tl.minimum(Tk, (pid_m + 1) * BLOCK_M + causal_offset)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + arange_n
        n_ok = offs_n < Tk
        kT = tl.load(K + b * skb + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        vT = tl.load(V + b * svb + h * svh + offs_n[None, :] * svn + offs_d[:, None] * svd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = _scores(q, kT, BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                    PAD + b * spb + offs_n, offs_m, offs_n, Tq, Tk, causal_offset,
                    HAS_BIAS, HAS_PAD, CAUSAL, PRECISION)
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        if BIAS_GRAD:
            tl.store(DBIAS + pid_bh * Tq * Tk + offs_m[:, None] * Tk + offs_n[None, :], ds,
                     mask=m_ok[:, None] & n_ok[None, :])

    tl.store(DQ + pid_bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


def _blocks(D: int, backward: bool) -> dict:
    block_d = max(16, triton.next_power_of_2(D))
    if interpreting():
        # Small tiles so CPU tests cover several blocks and ragged edges quickly.
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d)
    if backward:
        bm, bn, warps, stages = (64, 64, 4, 1) if block_d <= 64 else (32, 32, 4, 1)
    else:
        bm, bn, warps, stages = (128, 64, 8, 2) if block_d <= 64 else (64, 32, 4, 2)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages)


def _precision(dtype: torch.dtype) -> str:
    # Float32 inputs get exact products unless the user allowed TF32 for matmuls.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


class _FlashAttentionBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, pad_u8, causal):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        has_bias, has_pad = bias is not None, pad_u8 is not None
        bias_x = bias.expand(B, H, Tq, Tk) if has_bias else q
        bias_strides = bias_x.stride() if has_bias else (0, 0, 0, 0)
        pad_stride = pad_u8.stride(0) if has_pad else 0
        # Output laid out [B, Tq, H, D] and returned as a [B, H, Tq, D] view: the caller's
        # transpose(1, 2).reshape(B, Tq, H * D) is then free.
        out = torch.empty(B, Tq, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
        lse = torch.empty(B, H, Tq, dtype=torch.float32, device=q.device)
        cfg = _blocks(D, backward=False)
        grid = (triton.cdiv(Tq, cfg["BLOCK_M"]), B * H)
        _fwd_kernel[grid](q, k, v, bias_x, pad_u8 if has_pad else q, out, lse,
                          *q.stride(), *k.stride(), *v.stride(), *bias_strides, *out.stride(), pad_stride,
                          H, Tq, Tk, D, Tk - Tq,
                          HAS_BIAS=has_bias, HAS_PAD=has_pad, CAUSAL=causal,
                          PRECISION=_precision(q.dtype), **cfg)
        ctx.save_for_backward(q, k, v, bias, pad_u8, out, lse)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, bias, pad_u8, out, lse = ctx.saved_tensors
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        has_bias, has_pad = bias is not None, pad_u8 is not None
        bias_x = bias.expand(B, H, Tq, Tk) if has_bias else q
        bias_strides = bias_x.stride() if has_bias else (0, 0, 0, 0)
        pad_stride = pad_u8.stride(0) if has_pad else 0
        delta = (do.float() * out.float()).sum(-1).contiguous()  # [B, H, Tq], rowsum(dO ∘ O)
        dq = torch.empty(B, H, Tq, D, dtype=q.dtype, device=q.device)
        dk = torch.empty(B, H, Tk, D, dtype=k.dtype, device=k.device)
        dv = torch.empty(B, H, Tk, D, dtype=v.dtype, device=v.device)
        bias_grad = has_bias and ctx.needs_input_grad[3]
        # Zeros: causal blocks above the diagonal are never written.
        dbias = torch.zeros(B, H, Tq, Tk, dtype=torch.float32, device=q.device) if bias_grad else q
        common = (*q.stride(), *k.stride(), *v.stride(), *bias_strides, *do.stride(), pad_stride,
                  H, Tq, Tk, D, Tk - Tq)
        flags = dict(HAS_BIAS=has_bias, HAS_PAD=has_pad, CAUSAL=ctx.causal, PRECISION=_precision(q.dtype))
        cfg = _blocks(D, backward=True)
        pad_arg = pad_u8 if has_pad else q
        _bwd_dkdv_kernel[(triton.cdiv(Tk, cfg["BLOCK_N"]), B * H)](
            q, k, v, bias_x, pad_arg, do, lse, delta, dk, dv, *common, **flags, **cfg)
        _bwd_dq_kernel[(triton.cdiv(Tq, cfg["BLOCK_M"]), B * H)](
            q, k, v, bias_x, pad_arg, do, lse, delta, dq, dbias, *common,
            BIAS_GRAD=bias_grad, **flags, **cfg)
        if bias_grad:
            dims = [i for i, n in enumerate(bias.shape) if n == 1 and dbias.shape[i] != 1]
            if dims:
                dbias = dbias.sum(dim=dims, keepdim=True)
            dbias = dbias.to(bias.dtype)
        else:
            dbias = None
        return dq, dk, dv, dbias, None, None


def triton_attention(q_BHqD, k_BHkD, v_BHkD, bias_BHqk=None, key_padding_mask_Bk=None,
                     causal=False, dropout_p=0.0, training=False):
    """Same contract as ``reference_attention`` (queries pre-scaled), without dropout."""
    if dropout_p > 0.0 and training:
        raise ValueError("triton attention has no attention dropout; use sdpa or reference")
    if not (q_BHqD.is_cuda or interpreting()):
        raise RuntimeError("triton attention needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
    if bias_BHqk is not None and bias_BHqk.dim() != 4:
        raise ValueError(f"bias must be [B|1, H|1, Tq, Tk], got {tuple(bias_BHqk.shape)}")
    pad = None
    if key_padding_mask_Bk is not None:
        pad = key_padding_mask_Bk.to(torch.uint8).contiguous()
    return _FlashAttentionBias.apply(q_BHqD, k_BHkD, v_BHkD, bias_BHqk, pad, bool(causal))
