"""The TP plan on one process: coverage of every OFA parameter, shard/merge round trip,
the parallel layers at tp=1 equal the single-device model, loud failure on an uncovered
linear, and the DeepSpeed-mpu trap."""
import copy

import pytest
import torch
import torch.nn as nn

from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.parallel.engine_glue import check_mpu
from ofa_ds.parallel.groups import SINGLE, TPContext
from ofa_ds.parallel.layers import ColumnParallelLinear, is_sharded
from ofa_ds.parallel.plan import (TP_PLAN, apply_tensor_parallel, merge_state_dicts, partition_dim_for_key,
                                  rule_for, shard_state_dict)
from tests.distributed.workers import make_batch, model_inputs, parallel_loss, reference_loss

RANK0_OF_2 = TPContext(None, 0, 2)  # shards weights; no forward (no group to talk on)


def test_plan_fits_on_one_screen():
    assert len(TP_PLAN) <= 20


def test_huge_is_covered_and_split_as_expected():
    with torch.device("meta"):
        model = OFAModel(get_flavor("huge", vocab_size=59520))
    full = model.num_parameters()
    applied = dict(apply_tensor_parallel(model, RANK0_OF_2))
    assert applied["encoder.embed_tokens"] == applied["decoder.embed_tokens"] == "vocab"
    assert applied["decoder.output_projection"] == "vocab_head"
    assert applied["encoder.layers.23.self_attn.c_attn"] == "head_param"
    assert applied["decoder.layers.0.encoder_attn.k_proj"] == "column"
    assert applied["decoder.cross_pos_k_linear"] == "column"
    assert applied["encoder.image_rel_pos_table_list.3"] == "head_table"
    assert applied["decoder.layers.11.ffn_layernorm"] == "sharded_norm"
    # tied: the head reuses the embedding's shard
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    local = model.num_parameters()
    replicated = sum(p.numel() for p in model.parameters() if not is_sharded(p))
    assert local == replicated + (full - replicated) // 2
    assert replicated / full < 0.1  # ResNet, LayerNorms, position tables, row biases
    for name, p in model.named_parameters():
        assert (partition_dim_for_key(name) is not None) == is_sharded(p), name
        if is_sharded(p):
            assert p.partition_dim == partition_dim_for_key(name), name
    assert "tp_rank=0/2" in repr(model.encoder.layers[0].fc1) and "full_shape=(5120, 1280)" in repr(
        model.encoder.layers[0].fc1)


def test_shard_then_merge_is_identity():
    torch.manual_seed(0)
    sd = OFAModel(get_flavor("test", vocab_size=512)).state_dict()
    shards = [shard_state_dict(sd, TPContext(None, r, 4)) for r in range(4)]
    assert shards[1]["decoder.layers.1.fc2.weight"].shape == (64, 32)
    assert shards[1]["encoder.token_rel_pos_table_list.0.weight"].shape == (511, 1)
    merged = merge_state_dicts(shards)
    assert merged.keys() == sd.keys() and all(torch.equal(merged[k], sd[k]) for k in sd)


def test_tp1_layers_equal_the_single_device_model():
    torch.manual_seed(0)
    cfg = get_flavor("test", vocab_size=512, dropout=0.0)
    ref = OFAModel(cfg).train()
    par = copy.deepcopy(ref)
    apply_tensor_parallel(par, SINGLE)
    batch = make_batch()
    loss_ref, _ = reference_loss(ref(**model_inputs(batch))[0], batch)
    loss_par, _ = parallel_loss(par(**model_inputs(batch))[0], batch, SINGLE)
    loss_ref.backward(), loss_par.backward()
    assert torch.allclose(loss_par, loss_ref, rtol=1e-6)
    grads = dict(ref.named_parameters())
    for name, p in par.named_parameters():
        g = grads[name].grad
        assert (p.grad - g).abs().max() <= 1e-5 * max(g.abs().max(), 1e-4), name


def test_activation_dropout_moves_into_the_sharded_norm():
    model = OFAModel(get_flavor("test", vocab_size=512, activation_dropout=0.3))
    apply_tensor_parallel(model, SINGLE)
    layer = model.encoder.layers[0]
    assert layer.activation_dropout == 0.0 and layer.ffn_layernorm.input_dropout == 0.3


def test_uncovered_linear_fails_loudly():
    model = OFAModel(get_flavor("test", vocab_size=512))
    model.encoder.extra_head = nn.Linear(64, 64)
    with pytest.raises(ValueError, match="no tensor-parallel rule for nn.Linear.*encoder.extra_head"):
        apply_tensor_parallel(model, SINGLE)
    assert rule_for("classification_heads.vqa.dense") == "replicate"


def test_applying_twice_is_refused():
    model = OFAModel(get_flavor("test", vocab_size=512))
    apply_tensor_parallel(model, SINGLE)
    with pytest.raises(ValueError, match="already tensor-parallel"):
        apply_tensor_parallel(model, SINGLE)


def test_tp_model_without_mpu_is_refused():
    with torch.device("meta"):
        model = OFAModel(get_flavor("test", vocab_size=512))
    apply_tensor_parallel(model, RANK0_OF_2)
    with pytest.raises(ValueError, match="no mpu.*silently"):
        check_mpu(model, None)

    class OneWayMPU:
        def get_tensor_model_parallel_world_size(self):
            return 4

    with pytest.raises(ValueError, match="tensor-parallel size 4"):
        check_mpu(model, OneWayMPU())
    check_mpu(OFAModel(get_flavor("test", vocab_size=512)), None)  # single device: fine


def test_column_linear_repr_and_tags():
    layer = ColumnParallelLinear.from_module(nn.Linear(8, 6), TPContext(None, 1, 2))
    assert layer.weight.shape == (3, 8) and layer.weight.partition_dim == 0 and layer.bias.tensor_model_parallel
    assert "tp_rank=1/2" in repr(layer)
