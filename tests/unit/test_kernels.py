"""Kernel switch, fused-vs-reference parity on CPU, optimizer choice, checkpointing and compile.

Tolerances (float32 throughout; this CPU has no fast bf16):
* single attention call, SDPA vs reference: 1e-5. Both compute the same float32 sums in a
  different order (SDPA's CPU kernel is blocked/online-softmax), so only the last bits of
  each output differ.
* whole-model logits, SDPA vs reference: 1e-4 absolute. Those last-bit differences pass
  through 4 transformer layers and ~20 LayerNorms; logits are O(1), so 1e-4 leaves a
  margin of ~10x over what we see while still catching any masking or bias mistake
  (which moves logits by >1e-2).
"""
from __future__ import annotations

import pytest
import torch

from ofa_ds import kernels
from ofa_ds.config.flavors import get_flavor
from ofa_ds.kernels import registry
from ofa_ds.kernels.attention import reference_attention, sdpa_attention
from ofa_ds.kernels.elementwise import bias_dropout_add_eager, bias_gelu_eager, gelu_fp32
from ofa_ds.kernels.optim import optimizer_choice
from ofa_ds.model.ofa import OFAModel
from ofa_ds.tasks.criterion import label_smoothed_cross_entropy
from tests.unit.test_model import make_batch


@pytest.fixture(autouse=True)
def _restore_kernel_choices():
    yield
    for op in registry.op_names():
        registry.set_impl(op, "auto")


# -- registry ----------------------------------------------------------------------------
def test_auto_choice_on_cpu_is_the_reference():
    assert kernels.active_impl("attention", "cpu") == "reference"
    assert kernels.active_impl("layer_norm", "cpu") == "torch"
    assert kernels.active_impl("bias_gelu", "cpu") == "eager"
    assert kernels.active_impl("bias_dropout_add", "cpu") == "eager"


def test_override_and_errors():
    kernels.set_attention_impl("sdpa")
    assert kernels.attention_impl("cpu") == "sdpa"
    assert registry.resolve("attention", "cpu")[1] == "set explicitly"
    with pytest.raises(ValueError, match="unknown implementation"):
        kernels.set_impl("attention", "flash9")
    with pytest.raises(ValueError, match="unknown kernel op"):
        kernels.set_impl("softmax", "eager")
    kernels.configure({"attention": "auto", "bias_gelu": "triton"})
    assert kernels.attention_impl("cpu") == "reference"
    # Triton cannot run on CPU without its interpreter: an explicit choice fails loudly.
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        kernels.bias_gelu(torch.randn(2, 3))


def test_describe_lists_every_op_with_a_reason():
    rows = {r["op"]: r for r in kernels.describe("cpu")}
    assert set(rows) == {"attention", "layer_norm", "bias_gelu", "bias_dropout_add", "rel_pos_bias"}
    assert "apex" in rows["layer_norm"]["candidates"]
    assert rows["layer_norm"]["candidates"]["apex"] != "available"  # no CUDA here
    assert all(r["reason"] for r in rows.values())


def test_env_command_prints_versions_and_kernels(capsys):
    from ofa_ds.kernels.env import main

    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "deepspeed", "triton", "apex", "attention", "layer_norm", "optimizer"):
        assert word in out


# -- optimizer choice --------------------------------------------------------------------
@pytest.mark.parametrize("device,offload,name,extra", [
    ("cpu", False, "torch_adamw", {"torch_adam": True}),
    ("cpu", True, "torch_adamw", {"torch_adam": True}),
    ("cuda", True, "deepspeed_cpu_adam", {}),
    ("cuda", False, "torch_fused_adamw", {"torch_adam": True, "fused": True}),  # fused_adam not prebuilt here
])
def test_optimizer_choice(device, offload, name, extra):
    got, section = optimizer_choice(device, offload, params={"lr": 1e-4, "weight_decay": 0.01})
    assert got == name
    assert section == {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01, **extra}}


def test_optimizer_choice_rejects_impossible_requests():
    with pytest.raises(ValueError, match="needs CUDA"):
        optimizer_choice("cpu", False, prefer="torch_fused_adamw")
    with pytest.raises(ValueError, match="offloaded"):
        optimizer_choice("cuda", True, prefer="deepspeed_fused_adam")


def test_torch_adamw_section_builds_in_torch():
    # What DeepSpeed does with "torch_adam": pops it and passes the rest to torch.optim.AdamW.
    _, section = optimizer_choice("cpu", False, params={"lr": 1e-3})
    params = dict(section["params"])
    params.pop("torch_adam")
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], **params).step()


# -- attention ---------------------------------------------------------------------------
def _attention_inputs(B=2, H=3, Tq=9, Tk=11, D=8, bias_shape=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, Tq, D, generator=g) * (2 * D) ** -0.5).requires_grad_()
    k = torch.randn(B, H, Tk, D, generator=g).requires_grad_()
    v = torch.randn(B, H, Tk, D, generator=g).requires_grad_()
    bias = torch.randn(bias_shape or (B, H, Tq, Tk), generator=g).requires_grad_()
    pad = torch.zeros(B, Tk, dtype=torch.bool)
    pad[1, -3:] = True  # right padding on the second sample
    return q, k, v, bias, pad


@pytest.mark.parametrize("causal,Tq,bias_shape", [
    (False, 9, None),
    (True, 11, None),           # decoder self-attention, full sequence
    (True, 1, (1, 3, 1, 11)),   # incremental step: last query row, bias broadcast over batch
    (False, 9, (2, 1, 9, 11)),  # bias broadcast over heads
])
def test_sdpa_matches_reference_forward_and_backward(causal, Tq, bias_shape):
    q, k, v, bias, pad = _attention_inputs(Tq=Tq, bias_shape=bias_shape)
    g = torch.randn(q.shape[0], q.shape[1], Tq, v.shape[-1])
    results = []
    for fn in (reference_attention, sdpa_attention):
        out = fn(q, k, v, bias, pad, causal)
        results.append((out, *torch.autograd.grad(out, (q, k, v, bias), g)))
    for name, a, b in zip(("out", "dq", "dk", "dv", "dbias"), *results):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)


def test_model_logits_sdpa_vs_reference():
    torch.manual_seed(0)
    model = OFAModel(get_flavor("test", vocab_size=500)).eval()
    batch = make_batch(500)
    ref, _ = model(**batch)
    kernels.set_attention_impl("sdpa")
    got, _ = model(**batch)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


# -- elementwise ops ---------------------------------------------------------------------
def test_bias_gelu_eager_is_gelu_fp32_of_the_sum():
    x, b = torch.randn(2, 3, 8, dtype=torch.bfloat16), torch.randn(8, dtype=torch.bfloat16)
    assert torch.equal(bias_gelu_eager(x, b), gelu_fp32(x + b))
    assert torch.equal(kernels.bias_gelu(x), gelu_fp32(x))


def test_bias_dropout_add_eager_definition():
    x, r, b = torch.randn(3, 4, 8), torch.randn(3, 4, 8), torch.randn(8)
    scale = torch.tensor([0.0, 2.0, 2.0])
    torch.testing.assert_close(bias_dropout_add_eager(x, b, r, 0.0, True, scale),
                               r + (x + b) * scale[:, None, None])
    assert torch.equal(bias_dropout_add_eager(x, None, r, 0.5, False), r + x)


def test_dropout_add_eager_is_bit_identical_to_the_unfused_expression():
    from ofa_ds.model.layers import DropPath

    x, r = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    dp = DropPath(0.3).train()
    torch.manual_seed(1)
    got = kernels.dropout_add(x, r, 0.2, True, dp)
    torch.manual_seed(1)
    want = r + dp(torch.nn.functional.dropout(x, p=0.2, training=True))
    assert torch.equal(got, want)


# -- activation checkpointing and compile ------------------------------------------------
def _loss_and_grads(model, batch):
    logits, _ = model(**batch)
    target = batch["prev_output_tokens"].roll(-1, dims=1)
    loss = label_smoothed_cross_entropy(logits, target, pad=1).loss
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    return loss.detach(), grads


def _twin_models(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=500, dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1)
    cfg = get_flavor("test", **{**settings, **overrides})
    a = OFAModel(cfg).train()
    b = OFAModel(cfg).train()
    b.load_state_dict(a.state_dict())
    return a, b


def test_activation_checkpointing_is_exact():
    plain, ckpt = _twin_models()
    kernels.apply_activation_checkpointing(ckpt)
    kernels.apply_activation_checkpointing(ckpt)  # idempotent
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    batch = make_batch(500, image=32)
    torch.manual_seed(3)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    torch.manual_seed(3)
    loss_b, grads_b = _loss_and_grads(ckpt, batch)
    # Dropout and drop path are active: the RNG replay makes the recomputation identical.
    assert torch.equal(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    with torch.no_grad():  # eval / decoding path bypasses checkpointing
        ckpt.eval()(**batch)


def test_compile_keeps_loss_and_grads():
    # aot_eager traces every layer through dynamo and AOTAutograd (the parts that can change
    # semantics) without inductor's C++ build, so it stays fast on CPU CI. Inductor itself
    # is exercised on GPU by benchmarks/gpu_check.py.
    plain, compiled = _twin_models(dropout=0.0, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0)
    kernels.maybe_compile(compiled, backend="aot_eager")
    assert kernels.maybe_compile(plain, enabled=False) is plain
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    batch = make_batch(500, image=32)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(compiled, batch)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        if ga is not None:
            torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-4)


def test_gpu_check_script_runs_its_cpu_parts(tmp_path):
    """Smoke test of benchmarks/gpu_check.py (the real run needs a GPU): tiny sizes on CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--image", "32", "--src", "6", "--tgt", "4",
                         "--batch", "1", "--steps", "1", "--warmup", "0", "--variants", "unfused,sdpa",
                         "--json", str(out)])
    assert rc == 0
    import json

    report = json.loads(out.read_text())
    assert report["parity"] and all(r["passed"] for r in report["parity"])
    assert [r["variant"] for r in report["speed"]] == ["unfused", "sdpa"]
