"""Fused kernels on CUDA against the references (skipped without a GPU).

Error bounds: ``ofa_ds/kernels/parity.py`` (a fused path must be no less accurate against
a float64 truth than the reference path in the same dtype, 2x plus a small floor).
"""
from __future__ import annotations

import pytest
import torch

from ofa_ds import kernels
from ofa_ds.kernels import parity
from ofa_ds.kernels.attention import sdpa_attention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.bfloat16]
CASES = {
    "encoder": dict(Tq=200, Tk=200, causal=False, bias_heads=True),
    "decoder": dict(Tq=64, Tk=64, causal=True, bias_heads=True),
    "cross": dict(Tq=33, Tk=200, causal=False, bias_heads=True),
    "step": dict(Tq=1, Tk=40, causal=True, bias_heads=False),
    "head_dim_80": dict(Tq=70, Tk=70, causal=False, bias_heads=True, D=80),  # ofa_huge
}


@pytest.fixture(autouse=True)
def _restore():
    yield
    kernels.configure({op: "auto" for op in ("attention", "bias_gelu", "bias_dropout_add")})


def _impl(name):
    if name == "sdpa":
        return sdpa_attention
    from ofa_ds.kernels.triton_attention import triton_attention

    return lambda q, k, v, b, pad, causal: triton_attention(q, k, v, b, pad, causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_attention_parity(impl, case, dtype):
    r = parity.check_attention(_impl(impl), f"{impl} {case}", dtype=dtype, device="cuda", **CASES[case])
    assert r.passed, r.line() + f"\n{r.errors}\n{r.ref_errors}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_elementwise_parity(dtype):
    from ofa_ds.kernels.triton_elementwise import bias_dropout_add_triton, bias_gelu_triton

    results = [parity.check_bias_gelu(bias_gelu_triton, "bias_gelu", dtype=dtype, device="cuda")]
    results += parity.check_bias_dropout_add(bias_dropout_add_triton, "bias_dropout_add", dtype=dtype, device="cuda")
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


def test_auto_choice_on_cuda():
    assert kernels.active_impl("attention", "cuda") == "sdpa"
    assert kernels.active_impl("bias_gelu", "cuda") == "triton"


def _model_and_batch(**overrides):
    from ofa_ds.config.flavors import get_flavor
    from ofa_ds.model.ofa import OFAModel
    from tests.unit.test_model import make_batch

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = OFAModel(get_flavor("test", vocab_size=500, **overrides)).cuda()  # buffers too
    batch = {k: v.cuda() for k, v in make_batch(500).items()}
    return model, batch


@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_model_logits_fused_vs_reference(attention):
    model, batch = _model_and_batch()
    model.eval()
    with torch.no_grad():
        kernels.configure({"attention": "reference", "bias_gelu": "eager", "bias_dropout_add": "eager"})
        want, _ = model(**batch)
        kernels.configure({"attention": attention, "bias_gelu": "triton", "bias_dropout_add": "triton"})
        got, _ = model(**batch)
    # float32 on GPU, TF32 off: reordered sums only (see tests/unit/test_kernels.py).
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_checkpointing_replays_triton_dropout_exactly():
    """Triton dropout draws its seed from torch's CPU generator, which activation
    checkpointing restores before recomputing: masks, loss and grads must be identical."""
    plain, batch = _model_and_batch(dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1)
    ckpt, _ = _model_and_batch(dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1)
    ckpt.load_state_dict(plain.state_dict())
    kernels.apply_activation_checkpointing(ckpt)
    kernels.configure({"attention": "reference", "bias_gelu": "triton", "bias_dropout_add": "triton"})
    out = []
    for m in (plain.train(), ckpt.train()):
        torch.manual_seed(11)
        logits, _ = m(**batch)
        loss = logits.float().logsumexp(-1).mean()
        out.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)))
    torch.testing.assert_close(out[1][0], out[0][0], atol=0, rtol=0)
    for a, b in zip(out[0][1], out[1][1]):
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
