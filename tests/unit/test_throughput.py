"""Speed rewrites (issue 13) against the paths they replace: each must give the same numbers.

fp32 on CPU: forward outputs and every gradient within 1e-6 of the reference path (most are
bitwise equal; summation order is the only freedom).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from ofa_ds import kernels
from ofa_ds.config.flavors import get_flavor
from ofa_ds.kernels.relative_bias import embedding_bias, gather_bias
from ofa_ds.model.ofa import OFAModel
from tests.unit.test_model import make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def kernel(op: str, name: str):
    kernels.set_impl(op, name)
    try:
        yield
    finally:
        kernels.set_impl(op, "auto")


def loss_and_grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout, drop path and patch sampling draw the same numbers
    logits, _ = model(**batch, **kw)
    loss = logits.float().logsumexp(-1).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, tol=1e-6):
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, rtol=tol, atol=0), (la, lb)
    assert ga.keys() == gb.keys()
    worst = {n: float((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp_min(1e-30)) for n in ga}
    name = max(worst, key=worst.get)
    assert worst[name] <= tol, (name, worst[name])


def test_gather_bias_is_the_embedding_lookup_with_a_scatter_add_backward():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6892, 4, generator=g, requires_grad=True)
    buckets = torch.randint(0, 6892, (3, 50, 50), generator=g)
    buckets[:, :10, :10] = 3444  # heavy repeats, as the image diagonal has
    grad_out = torch.randn(3, 50, 50, 4, generator=g)
    ref = embedding_bias(table, buckets)
    (d_ref,) = torch.autograd.grad(ref, table, grad_out)
    out = gather_bias(table, buckets)
    (d_out,) = torch.autograd.grad(out, table, grad_out)
    assert torch.equal(out, ref)
    assert torch.allclose(d_out, d_ref, rtol=0, atol=1e-6 * float(d_ref.abs().max()))
    with torch.no_grad():
        assert torch.equal(gather_bias(table, buckets), ref)


def test_model_with_gather_bias_matches_embedding_bias():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).train()
    batch = make_batch(500)
    with kernel("rel_pos_bias", "embedding"):
        ref = loss_and_grads(model, batch, sample_patch_num=8)
    with kernel("rel_pos_bias", "gather"):
        got = loss_and_grads(model, batch, sample_patch_num=8)
    assert_same(ref, got)
    assert any("image_rel_pos_table" in n for n in ref[1])
