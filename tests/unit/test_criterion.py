"""OFA's label-smoothed cross entropy against its definition (spec ofa_data_and_tasks.md §4.1)."""
from __future__ import annotations

import pytest
import torch

from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy


def batch(V=11, B=2, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    target = torch.randint(4, V, (B, T), generator=g)
    target[:, -1] = 2  # eos
    target[1, 1:] = 1  # padding
    return logits, target


def by_definition(logits, target, conf, eps, allowed):
    """1 - eps on the target, eps spread evenly over the other allowed tokens."""
    total = 0.0
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            y = int(target[b, t])
            if y == 1:
                continue
            ok = allowed[b, t]
            lp = torch.log_softmax(logits[b, t].masked_fill(~ok, float("-inf")), -1) * conf[b]
            others = [v for v in range(len(ok)) if ok[v] and v != y]
            total += -(1 - eps) * lp[y] - eps / len(others) * sum(lp[v] for v in others)
    return total


def test_smoothing_spreads_over_the_vocabulary():
    logits, target = batch()
    conf = torch.tensor([1.0, 2.0])
    out = label_smoothed_cross_entropy(logits, target, conf, options=LossOptions(label_smoothing=0.1))
    allowed = torch.ones_like(logits, dtype=torch.bool)
    assert out.ntokens == 5
    torch.testing.assert_close(out.loss, torch.as_tensor(by_definition(logits, target, conf, 0.1, allowed)))


def test_constraint_range_keeps_specials():
    logits, target = batch()
    target[0, :3] = torch.tensor([6, 7, 6])
    opts = LossOptions(label_smoothing=0.2, constraint_range=(6, 9))
    out = label_smoothed_cross_entropy(logits, target, None, options=opts)
    ids = torch.arange(logits.shape[-1])
    allowed = ((ids < 4) | ((ids >= 6) & (ids < 9))).expand(logits.shape)
    conf = torch.ones(2)
    torch.testing.assert_close(out.loss, torch.as_tensor(by_definition(logits, target, conf, 0.2, allowed)))


def test_constraint_masks_use_ofas_epsilon():
    logits, target = batch()
    mask = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    mask.scatter_(-1, target[..., None], True)
    out = label_smoothed_cross_entropy(logits, target, None, options=LossOptions(label_smoothing=0.1),
                                       constraint_masks_BTV=mask)
    # OFA divides by (n_allowed - 1 + 1e-6): equal to the definition within that 1e-6.
    torch.testing.assert_close(out.loss, torch.as_tensor(by_definition(logits, target, torch.ones(2), 0.1, mask)),
                               rtol=1e-5, atol=1e-5)


def test_ignore_eos_and_drop_worst():
    logits, target = batch()
    full = label_smoothed_cross_entropy(logits, target)
    no_eos = label_smoothed_cross_entropy(logits, target, options=LossOptions(ignore_eos=True))
    assert no_eos.ntokens == full.ntokens - 1  # row 1 is padded before its eos
    drop = LossOptions(drop_worst_ratio=0.4, drop_worst_after=10)
    assert label_smoothed_cross_entropy(logits, target, options=drop, update_num=10).ntokens == full.ntokens
    kept = label_smoothed_cross_entropy(logits, target, options=drop, update_num=11)
    assert kept.ntokens == int(full.ntokens * 0.6) and kept.loss < full.loss
