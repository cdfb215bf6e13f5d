"""MoE FFN (DeepSpeed backend) on CPU, single process (expert parallel size 1 needs no
process group)."""
from __future__ import annotations

import pytest
import torch

from ofa_ds import kernels
from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.moe import apply_moe, collect_moe_aux_loss, moe_modules, parse_layer_spec
from ofa_ds.model.ofa import OFAModel
from tests.unit.test_model import make_batch

pytest.importorskip("deepspeed")


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return OFAModel(get_flavor("test", vocab_size=500, **overrides))


def test_layer_spec_parsing():
    assert parse_layer_spec("encoder:1,3;decoder:1", 4, 2) == {"encoder": [1, 3], "decoder": [1]}
    assert parse_layer_spec("decoder:all", 4, 2) == {"decoder": [0, 1]}
    for bad in ("encoder:4", "middle:1", "encoder", ""):
        with pytest.raises(ValueError):
            parse_layer_spec(bad, 4, 2)


def test_one_expert_top1_equals_the_dense_ffn():
    """One expert, top-1, capacity = all tokens: the gate's softmax over one expert is 1, so
    the MoE must reproduce the dense FFN it was initialised from, forward and backward."""
    # Training mode, but no dropout: the router's random token selection draws from torch's
    # RNG, so dropout masks after the first MoE layer would differ from the dense run.
    dense = _model(dropout=0.0).train()
    moe = _model(dropout=0.0).train()
    moe.load_state_dict(dense.state_dict())
    assert apply_moe(moe, "encoder:0,1;decoder:1", num_experts=1, top_k=1, capacity_factor=1.0) == \
        ["encoder.layers.0", "encoder.layers.1", "decoder.layers.1"]
    batch = make_batch(500, image=32)
    torch.manual_seed(5)
    want, _ = dense(**batch)
    torch.manual_seed(5)
    got, _ = moe(**batch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    dense_grads = dict(dense.named_parameters())
    expert = moe.encoder.layers[0].moe.inner.deepspeed_moe.experts.deepspeed_experts[0]
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "ffn_layernorm.weight"):
        torch.testing.assert_close(expert.get_parameter(name).grad,
                                   dense_grads[f"encoder.layers.0.{name}"].grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(moe.decoder.embed_tokens.weight.grad, dense.decoder.embed_tokens.weight.grad,
                               atol=1e-6, rtol=1e-5)

    aux = collect_moe_aux_loss(moe)
    # GShard loss = E * sum_e(mean gate prob_e * fraction routed to e) = 1 per layer here.
    torch.testing.assert_close(aux.detach(), torch.tensor(3.0))
    assert collect_moe_aux_loss(dense) is None


def test_top2_aux_loss_is_finite_and_trains():
    model = _model().train()
    apply_moe(model, "encoder:all;decoder:0", num_experts=4, top_k=2, capacity_factor=2.0)
    logits, _ = model(**make_batch(500, image=32))
    aux = collect_moe_aux_loss(model)
    assert torch.isfinite(aux) and aux.requires_grad
    (logits.float().logsumexp(-1).mean() + 0.01 * aux).backward()
    gate = model.encoder.layers[0].moe.inner.deepspeed_moe.gate.wg.weight
    assert gate.grad is not None and torch.isfinite(gate.grad).all()
    with pytest.raises(RuntimeError, match="no aux loss"):
        collect_moe_aux_loss(model)  # already collected for this forward


def test_dense_ffn_parameters_are_removed_and_errors_are_clear():
    model = _model()
    apply_moe(model, "decoder:0", num_experts=2)
    keys = model.state_dict().keys()
    assert not any(k.startswith("decoder.layers.0.fc1") for k in keys)
    assert any(k.startswith("decoder.layers.0.moe.") for k in keys)
    assert "decoder.layers.1.fc1.weight" in keys
    assert len(moe_modules(model)) == 1
    with pytest.raises(ValueError, match="already has"):
        apply_moe(model, "decoder:0", num_experts=2)
    with pytest.raises(ValueError, match="divisible"):
        apply_moe(model, "decoder:1", num_experts=3, ep_size=2)
    with pytest.raises(ValueError, match="backend"):
        apply_moe(model, "decoder:1", num_experts=2, backend="tutel")


def test_megablocks_backend_explains_what_it_needs():
    with pytest.raises((ImportError, RuntimeError), match="torch==2.7.0"):
        apply_moe(_model(), "decoder:0", num_experts=2, backend="megablocks")


def test_moe_under_activation_checkpointing_has_the_same_grads():
    plain, ckpt = _model(), _model()
    for m in (plain, ckpt):
        torch.manual_seed(1)  # same gate init
        apply_moe(m, "encoder:1;decoder:1", num_experts=2, top_k=1, capacity_factor=2.0)
        m.train()
    ckpt.load_state_dict(plain.state_dict())
    kernels.apply_activation_checkpointing(ckpt)
    batch = make_batch(500, image=32)
    results = []
    for m in (plain, ckpt):
        torch.manual_seed(2)
        logits, _ = m(**batch)
        loss = logits.float().logsumexp(-1).mean() + 0.01 * collect_moe_aux_loss(m)
        results.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert (a is None and b is None) or torch.equal(a, b)


def test_param_groups_split_experts_out_for_deepspeed():
    from ofa_ds.model.moe import moe_param_groups

    model = _model()
    apply_moe(model, "decoder:0", num_experts=2)
    groups = moe_param_groups(model, weight_decay=0.01)
    expert_groups = [g for g in groups if g.get("moe")]
    n_expert = sum(p.numel() for g in expert_groups for p in g["params"])
    experts = model.decoder.layers[0].moe.inner.deepspeed_moe.experts
    assert n_expert == sum(p.numel() for p in experts.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
