"""Speed rewrites (issue 13) against the paths they replace: each must give the same numbers.

fp32 on CPU: forward outputs and every gradient within 1e-6 of the reference path (most are
bitwise equal; summation order is the only freedom), 1e-5 where another convolution
algorithm runs (channels-last) or a compiler fuses the arithmetic (torch.compile).
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
    """Loss within ``tol`` relative; each gradient within ``tol`` of its largest entry (or of
    1e-3 of the largest gradient overall, for the ones that are zero up to rounding, such as
    the key-projection biases, which softmax cancels)."""
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, rtol=tol, atol=0), (la, lb)
    assert ga.keys() == gb.keys()
    floor = 1e-3 * max(float(g.abs().max()) for g in ga.values())
    worst = {n: float((ga[n] - gb[n]).abs().max()) / max(float(ga[n].abs().max()), floor) for n in ga}
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


def test_channels_last_resnet_matches():
    from ofa_ds.model.resnet import ResNetBackbone

    torch.manual_seed(0)
    net = ResNetBackbone((1, 1, 1)).train()
    x = torch.randn(2, 3, 64, 64)
    out_ref = net(x)
    (g_ref,) = torch.autograd.grad(out_ref.square().sum(), net.conv1.weight)
    net.use_channels_last(True)
    out = net(x)
    (g,) = torch.autograd.grad(out.square().sum(), net.conv1.weight)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # Another convolution algorithm (NHWC) sums in another order; the batch statistics of
    # three BatchNorms amplify that to ~4e-6 of the largest value, hence 1e-5 here.
    assert torch.allclose(out, out_ref, rtol=0, atol=1e-5 * float(out_ref.abs().max()))
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-5 * float(g_ref.abs().max()))


def test_mixed_input_batchnorm_matches_the_cast_path_in_bf16():
    import copy

    from ofa_ds.model.resnet import BatchNorm2d, set_mixed_input_batchnorm

    ref_bn = BatchNorm2d(8).train()
    ref_bn.weight.data = torch.rand(8).bfloat16()
    ref_bn.bias.data = torch.rand(8).bfloat16()
    bn = copy.deepcopy(ref_bn)
    x = (torch.randn(4, 8, 6, 6) * 3 + 1).bfloat16()
    ref = ref_bn(x)
    try:
        set_mixed_input_batchnorm(True)
        got = bn(x)
    finally:
        set_mixed_input_batchnorm(False)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref)
    # The statistics are float32 either way; the mixed kernel sums in another order.
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, rtol=1e-6, atol=0)
    assert torch.allclose(bn.running_var, ref_bn.running_var, rtol=1e-6, atol=0)


def test_resnet_compile_matches_eager():
    """The ResNet region compiles (dynamo capture + AOT autograd; the aot_eager backend skips
    inductor's C++ build, which takes minutes on CPU) and gives the eager numbers; the layer
    regions are tested in test_kernels.py. CUDA graphs are CUDA-only: on CPU the same regions
    compile without them."""
    import torch._dynamo

    from ofa_ds.kernels.wrap import SpeedOptions, apply_speed_options, compile_mode

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).train()
    batch = make_batch(500)
    ref = loss_and_grads(model, batch, sample_patch_num=8)
    options = SpeedOptions(compile="resnet", cuda_graphs=True)
    assert compile_mode(options, "cpu") is None  # the CPU fallback: no CUDA graphs
    assert compile_mode(options, "cuda") == "reduce-overhead"
    assert compile_mode(SpeedOptions(compile="all"), "cuda") is None
    apply_speed_options(model, options, "cpu", compile_backend="aot_eager")
    assert model.encoder.embed_images._compiled_call_impl is not None
    got = loss_and_grads(model, batch, sample_patch_num=8)
    assert_same(ref, got, tol=1e-5)
    with pytest.raises(ValueError, match="cuda_graphs"):
        SpeedOptions(cuda_graphs=True).validate()
