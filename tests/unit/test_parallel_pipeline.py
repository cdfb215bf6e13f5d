"""Pipeline pieces on one process: the sequential twin is the single-device model, the
cost split, and the start-up traps (tied weight never saved, shapes changing)."""
import pytest
import torch
from deepspeed.runtime.pipe import TiedLayerSpec

from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.parallel.pipeline import (OFAPipelineSequential, TokenEmbeddingPipe, check_tied_specs, lm_head,
                                      load_single_state_dict, make_pipeline_loss_fn, partition_by_cost,
                                      piece_costs, pipeline_batch, pipeline_specs)
from tests.distributed.workers import OPTIONS, make_batch, model_inputs, reference_loss

CFG = get_flavor("test", vocab_size=512, dropout=0.0)


def test_sequential_twin_is_the_model_exactly():
    torch.manual_seed(0)
    model = OFAModel(CFG).train()
    seq = OFAPipelineSequential(pipeline_specs(CFG), make_pipeline_loss_fn(None, OPTIONS))
    load_single_state_dict(seq, model.state_dict())
    assert sum(p.numel() for p in seq.parameters()) == model.num_parameters()
    batch = make_batch()
    inputs, labels = pipeline_batch(batch)
    logits = seq(inputs)
    loss = seq.loss_fn(logits, labels)
    ref_logits, _ = model(**model_inputs(batch))
    ref_loss, _ = reference_loss(ref_logits, batch)
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    loss.backward(), ref_loss.backward()
    ref = dict(model.named_parameters())
    for name, p in seq.named_parameters():
        key = name.split(".", 2)[2]  # pieces.<i>.<model fqn> / tied_modules.<key>.<model fqn>
        assert torch.equal(p.grad, ref[key].grad), key


def test_pieces_carry_single_device_names():
    names = set()
    for spec in pipeline_specs(CFG)[1:-1]:
        names |= set(spec.build().state_dict())
    names |= set(TokenEmbeddingPipe(CFG).state_dict())
    model_names = set(OFAModel(CFG).state_dict()) - {"decoder.embed_tokens.weight", "decoder.output_projection.weight"}
    assert names == model_names


def test_huge_split_balances_cost():
    cfg = get_flavor("huge")
    costs = piece_costs(cfg)
    enc_layer, dec_layer = costs[2], costs[2 + cfg.encoder_layers + 1]
    assert enc_layer > 3 * dec_layer  # 900+ encoder tokens vs 64 decoder tokens at 480 px
    for stages in (2, 4, 8):
        parts = partition_by_cost(costs, stages)
        loads = [sum(costs[a:b]) for a, b in zip(parts, parts[1:])]
        assert parts[1] >= 2  # embeddings (pieces 0, 1) never split
        assert max(loads) / (sum(costs) / stages) < 1.35, (stages, parts)
    with pytest.raises(ValueError, match="pipeline pieces"):
        partition_by_cost(piece_costs(CFG), 9)


def test_tied_weight_must_be_saved_by_its_first_occurrence():
    check_tied_specs(pipeline_specs(CFG))
    bad = [TiedLayerSpec("embed_tokens", TokenEmbeddingPipe, CFG, forward_fn=lm_head)]
    with pytest.raises(ValueError, match="never save the tied weight"):
        check_tied_specs(bad)


def test_fixed_shapes_refuse_a_shape_change():
    piece = TokenEmbeddingPipe(CFG, fixed_shapes=True)
    piece(pipeline_batch(make_batch(S=7))[0])
    piece(pipeline_batch(make_batch(S=7, seed=1))[0])
    with pytest.raises(ValueError, match="dynamic_shape"):
        piece(pipeline_batch(make_batch(S=9))[0])
