"""Per-step, per-replica randomness (``ofa_ds.parallel.random.StepRNG``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.parallel.random import StepRNG, step_seed


def _masks(rng: StepRNG, step: int):
    rng.begin_step(step)
    dropout = F.dropout(torch.ones(64), p=0.5, training=True)
    patches = torch.rand(32, generator=rng.patch_generator).argsort()
    return dropout, patches


def test_replicas_and_stages_draw_different_masks_tp_ranks_the_same():
    # A TP rank is not an input: two TP ranks of replica 0 build the same StepRNG.
    tp0, tp1 = _masks(StepRNG(7, dp_rank=0), 3), _masks(StepRNG(7, dp_rank=0), 3)
    dp1 = _masks(StepRNG(7, dp_rank=1), 3)
    stage1 = _masks(StepRNG(7, dp_rank=0, pp_rank=1), 3)
    assert all(torch.equal(a, b) for a, b in zip(tp0, tp1))
    for other in (dp1, stage1):
        assert not torch.equal(tp0[0], other[0]) and not torch.equal(tp0[1], other[1])
    # Streams are independent of each other and of the step.
    assert step_seed(7, 3) != step_seed(7, 3, stream="patches") != step_seed(7, 4, stream="patches")


def test_masks_depend_only_on_the_step_not_on_history():
    a = StepRNG(7, dp_rank=1)
    first = _masks(a, 5)
    torch.rand(1000)  # anything else drawing from the global RNG in between (a DataLoader iterator)
    a.patch_generator.manual_seed(123)
    again = _masks(a, 5)
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_state_dict_round_trip_is_plain_and_restores_the_patch_stream():
    rng = StepRNG(7, dp_rank=1)
    rng.begin_step(2)
    torch.rand(5, generator=rng.patch_generator)
    state = rng.state_dict()
    expected = torch.rand(5, generator=rng.patch_generator)
    other = StepRNG(7, dp_rank=1)
    other.load_state_dict(state)
    assert torch.equal(torch.rand(5, generator=other.patch_generator), expected)
    assert all(isinstance(v, (int, torch.Tensor)) for v in state.values())


def test_encoder_samples_patches_from_the_generator_it_is_given():
    model = OFAModel(get_flavor("test", vocab_size=64)).train()
    images = torch.randn(2, 3, 32, 32)
    gen = torch.Generator()
    model.encoder.patch_generator = gen
    gen.manual_seed(1)
    a = model.encoder.embed_patches(images, None, 3)[1]
    torch.manual_seed(99)  # the global RNG no longer matters
    gen.manual_seed(1)
    b = model.encoder.embed_patches(images, None, 3)[1]
    gen.manual_seed(2)
    c = model.encoder.embed_patches(images, None, 3)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
