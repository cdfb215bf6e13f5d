"""Triton kernels against the plain-PyTorch references, on CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before the kernels are defined, so the real tests run
in a child pytest process with it set (``test_triton_kernels_under_the_interpreter``);
in the parent process they are skipped. On a GPU machine ``tests/gpu`` runs the same
kernels compiled.

Tolerances (float32): the interpreter runs the kernels' arithmetic in numpy float32 with
a different summation order (online softmax over 16-wide key blocks), so outputs and
gradients agree with the reference to ~1e-6; we allow 2e-5.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
REPO_ROOT = Path(__file__).resolve().parents[2]

needs_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child process of "
                             "test_triton_kernels_under_the_interpreter")


@pytest.mark.skipif(INTERPRETING, reason="this is the parent test")
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# -- the tests below run only in the child -----------------------------------------------
ATOL = RTOL = 2e-5


def _inputs(B, H, Tq, Tk, D, bias_shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, Tq, D, generator=g) * (2 * D) ** -0.5).requires_grad_()
    k = torch.randn(B, H, Tk, D, generator=g).requires_grad_()
    v = torch.randn(B, H, Tk, D, generator=g).requires_grad_()
    bias = None if bias_shape is False else torch.randn(bias_shape or (B, H, Tq, Tk), generator=g).requires_grad_()
    pad = torch.zeros(B, Tk, dtype=torch.bool)
    pad[-1, -5:] = True
    return q, k, v, bias, pad


@needs_interpreter
@pytest.mark.parametrize("causal,Tq,Tk,D,bias_shape", [
    (False, 37, 45, 16, None),        # encoder / cross attention, ragged blocks
    (True, 45, 45, 16, None),         # decoder self-attention
    (True, 1, 45, 16, (1, 3, 1, 45)), # incremental step, bias broadcast over batch
    (False, 20, 33, 20, (2, 1, 20, 33)),  # head dim not a power of two, bias over heads
    (True, 21, 21, 16, False),        # no bias at all
])
def test_flash_attention_with_bias_matches_reference(causal, Tq, Tk, D, bias_shape):
    from ofa_ds.kernels.attention import reference_attention
    from ofa_ds.kernels.triton_attention import triton_attention

    q, k, v, bias, pad = _inputs(2, 3, Tq, Tk, D, bias_shape)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    g = torch.randn(2, 3, Tq, D)
    got = triton_attention(q, k, v, bias, pad, causal)
    got_grads = torch.autograd.grad(got, leaves, g)
    want = reference_attention(q, k, v, bias, pad, causal)
    want_grads = torch.autograd.grad(want, leaves, g)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=name)


@needs_interpreter
def test_flash_attention_fully_masked_row_is_zero_not_nan():
    from ofa_ds.kernels.triton_attention import triton_attention

    q, k, v, _, _ = _inputs(1, 1, 4, 4, 16, False)
    pad = torch.ones(1, 4, dtype=torch.bool)
    out = triton_attention(q, k, v, None, pad, False)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(q.grad).all()


@needs_interpreter
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_eager(with_bias):
    from ofa_ds.kernels.elementwise import bias_gelu_eager
    from ofa_ds.kernels.triton_elementwise import bias_gelu_triton

    x = torch.randn(3, 7, 40, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if with_bias else None
    leaves = [t for t in (x, b) if t is not None]
    g = torch.randn(3, 7, 40)
    got = bias_gelu_triton(x, b)
    want = bias_gelu_eager(x, b)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for a, c in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g)):
        torch.testing.assert_close(a, c, atol=ATOL, rtol=RTOL)


@needs_interpreter
def test_bias_dropout_add_without_dropout_matches_eager():
    from ofa_ds.kernels.elementwise import bias_dropout_add_eager
    from ofa_ds.kernels.triton_elementwise import bias_dropout_add_triton

    x, r = torch.randn(3, 5, 24, requires_grad=True), torch.randn(3, 5, 24, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    scale = torch.tensor([0.0, 1.25, 1.25])  # drop path: first sample's branch dropped
    g = torch.randn(3, 5, 24)
    got = bias_dropout_add_triton(x, b, r, 0.1, False, scale)  # eval: dropout off
    want = bias_dropout_add_eager(x, b, r, 0.1, False, scale)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for a, c in zip(torch.autograd.grad(got, (x, b, r), g), torch.autograd.grad(want, (x, b, r), g)):
        torch.testing.assert_close(a, c, atol=ATOL, rtol=RTOL)


@needs_interpreter
def test_bias_dropout_add_mask_is_consistent_and_reproducible():
    from ofa_ds.kernels.triton_elementwise import bias_dropout_add_triton

    p = 0.3
    x, r = torch.randn(4, 16, 32, requires_grad=True), torch.randn(4, 16, 32)
    b = torch.randn(32, requires_grad=True)
    torch.manual_seed(7)
    out = bias_dropout_add_triton(x, b, r, p, True)
    g = torch.randn_like(out)
    dx, db = torch.autograd.grad(out, (x, b), g)
    branch = (out - r).detach()
    keep = branch != 0
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05
    # Kept elements are scaled by 1/(1-p); backward uses the very same mask.
    torch.testing.assert_close(branch[keep], ((x + b) / (1 - p)).detach()[keep], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(dx, torch.where(keep, g / (1 - p), torch.zeros(())), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(db, dx.sum((0, 1)), atol=1e-4, rtol=RTOL)
    torch.manual_seed(7)  # same torch seed -> same Philox seed -> same mask
    assert torch.equal(bias_dropout_add_triton(x, b, r, p, True), out)


@needs_interpreter
def test_model_with_every_triton_kernel_matches_reference():
    from ofa_ds import kernels
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.ofa import OFAModel
    from tests.unit.test_model import make_batch

    torch.manual_seed(0)
    # Training mode with dropout and drop path off: exercises the training code path and
    # backward while keeping both runs deterministic.
    # One layer each keeps the interpreter (a Python loop per program) at a few seconds.
    model = OFAModel(get_flavor("test", vocab_size=500, dropout=0.0, encoder_layers=1,
                                decoder_layers=1)).train()
    batch = make_batch(500, B=3, S=6, T=5, image=32)  # 2x2 patches: keeps the interpreter quick
    params = [p for p in model.parameters()]

    def run():
        logits, _ = model(**batch)
        return logits, torch.autograd.grad(logits.float().logsumexp(-1).sum(), params, allow_unused=True)

    want, want_grads = run()
    try:
        kernels.configure({"attention": "triton", "bias_gelu": "triton", "bias_dropout_add": "triton"})
        got, got_grads = run()
    finally:
        kernels.configure({"attention": "auto", "bias_gelu": "auto", "bias_dropout_add": "auto"})
    # Same reasoning as the SDPA whole-model test in test_kernels.py: float32 reordering
    # through the layers and LayerNorms, logits O(1).
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, c in zip(got_grads, want_grads):
        if c is not None:
            torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-3)
