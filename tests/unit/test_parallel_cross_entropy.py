"""Vocab-parallel label-smoothed CE at tp=1 equals OFA's criterion (values and gradients)
for every option; the multi-rank case is checked in tests/distributed."""
import pytest
import torch

from ofa_ds.parallel.cross_entropy import vocab_parallel_label_smoothed_cross_entropy
from ofa_ds.parallel.groups import SINGLE
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy


@pytest.mark.parametrize("options, masks, conf", [
    (LossOptions(), False, False),
    (LossOptions(label_smoothing=0.1), False, True),
    (LossOptions(label_smoothing=0.1, constraint_range=(10, 40)), False, True),
    (LossOptions(label_smoothing=0.1, ignore_prefix_size=1, ignore_eos=True), True, True),
    (LossOptions(label_smoothing=0.2, drop_worst_ratio=0.3), True, False),
])
def test_matches_the_criterion(options, masks, conf):
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 6, 50
    logits = torch.randn(B, T, V, generator=g)
    target = torch.randint(10, 40, (B, T), generator=g)
    target[0, -1], target[1, 2] = 1, 2
    c = torch.rand(B, generator=g) if conf else None
    m = torch.rand(B, T, V, generator=g) > 0.3 if masks else None
    if m is not None:
        m.scatter_(-1, target[..., None], True)
    a_in, b_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a = label_smoothed_cross_entropy(a_in, target, c, options=options, constraint_masks_BTV=m, update_num=5)
    b = vocab_parallel_label_smoothed_cross_entropy(b_in, target, c, tp=SINGLE, options=options,
                                                    constraint_masks_BTV=m, update_num=5)
    (a.loss + 0.5 * a.nll_loss).backward(), (b.loss + 0.5 * b.nll_loss).backward()
    assert a.ntokens == b.ntokens
    assert torch.allclose(a.loss, b.loss, rtol=1e-6) and torch.allclose(a.nll_loss, b.nll_loss, rtol=1e-6)
    assert torch.allclose(a_in.grad, b_in.grad, atol=1e-6)


def test_padded_vocab_equals_the_unpadded_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 52, generator=g)
    target = torch.randint(4, 50, (2, 4), generator=g)
    opts = LossOptions(label_smoothing=0.1)
    a = label_smoothed_cross_entropy(logits[..., :50], target, options=opts)
    b = vocab_parallel_label_smoothed_cross_entropy(logits, target, tp=SINGLE, options=opts, valid_vocab_size=50)
    assert torch.allclose(a.loss, b.loss, rtol=1e-6)
