"""Worker bodies of the distributed tests (run in spawned processes by ``harness``).

Each worker checks parity against a single-device reference that it computes itself (the
reference is cheap on the ``test`` flavor), asserts inside the worker, and returns a small
dict of timings and numbers for the test to report.
"""
from __future__ import annotations

import copy
import time

import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.model.ofa import OFAModel
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy

VOCAB = 512
OPTIONS = LossOptions(label_smoothing=0.1)


def make_batch(vocab: int = VOCAB, B: int = 4, S: int = 7, T: int = 6, image: int = 32, seed: int = 0) -> dict:
    """Text samples and an image-code sample (code_masks), a sample without image, padding."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (B, S), generator=g)
    src[:, 0], src[:, -1] = 0, 2
    src[0, -2:] = 1
    prev = torch.randint(4, vocab, (B, T), generator=g)
    prev[:, 0] = 0
    prev[1, -1] = 1
    target = torch.randint(4, vocab, (B, T), generator=g)
    target[:, -1] = 2
    target[1, -1] = 1
    constraint = torch.rand(B, T, vocab, generator=g) > 0.2
    constraint.scatter_(-1, target[..., None], True)
    return dict(src_tokens=src, prev_output_tokens=prev,
                patch_images=torch.randn(B, 3, image, image, generator=g),
                patch_masks=torch.tensor([True, False, True, True][:B]),
                code_masks=torch.tensor([False, False, True, False][:B]),
                target=target, conf=torch.rand(B, generator=g) + 0.5, constraint_masks=constraint)


def model_inputs(batch: dict) -> dict:
    keys = ("src_tokens", "prev_output_tokens", "patch_images", "patch_masks", "code_masks")
    return {k: batch[k] for k in keys}


def reference_loss(logits, batch, options=OPTIONS):
    out = label_smoothed_cross_entropy(logits, batch["target"], batch["conf"], options=options,
                                       constraint_masks_BTV=batch["constraint_masks"])
    return out.loss / out.ntokens, out


def parallel_loss(logits, batch, tp, options=OPTIONS):
    from ofa_ds.parallel.cross_entropy import vocab_parallel_label_smoothed_cross_entropy

    out = vocab_parallel_label_smoothed_cross_entropy(
        logits, batch["target"], batch["conf"], tp=tp, options=options,
        constraint_masks_BTV=batch["constraint_masks"])
    return out.loss / out.ntokens, out


def assert_close(actual, expected, what: str, rel: float = 1e-5) -> float:
    """max |a - e| <= rel * max |e|; returns the ratio. The scale has a floor of 1e-4:
    gradients that vanish in exact arithmetic (a key projection's bias: softmax is shift
    invariant) are ~1e-11 of rounding noise, not signal."""
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    scale = max(expected.detach().abs().max().item(), 1e-4)
    assert err <= rel * scale, f"{what}: max error {err:.3e} vs scale {scale:.3e} (rel {err / scale:.2e})"
    return err / scale


def compare_grads(model, reference, tp, what: str) -> float:
    """Gradients of a TP model against a single-device model's, shard by shard."""
    from ofa_ds.parallel.layers import shard_tensor
    from ofa_ds.parallel.plan import partition_dim_for_key

    ref = dict(reference.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        expected = ref[name].grad
        dim = partition_dim_for_key(name)
        if dim is not None:
            expected = shard_tensor(expected, dim, tp)
        assert p.grad is not None, f"{what}: {name} has no gradient"
        worst = max(worst, assert_close(p.grad, expected, f"{what} grad {name}"))
    return worst


# --------------------------------------------------------------------------------------------
def tp_parity(rank: int, world: int) -> dict:
    """TP=2 vs single device: logits, loss (vocab-parallel CE), every gradient; replicated
    grads identical across TP; dropout TP-invariant (TP=2 vs TP=1); vocab-parallel CE
    options; a gathered TP=2 checkpoint gives the single model the same logits."""
    from ofa_ds.parallel import ParallelDims, apply_tensor_parallel, build_groups
    from ofa_ds.parallel.cross_entropy import (gather_vocab_logits,
                                               vocab_parallel_label_smoothed_cross_entropy)
    from ofa_ds.parallel.groups import SINGLE
    from ofa_ds.parallel.layers import shard_tensor
    from ofa_ds.parallel.plan import (gather_tensor_parallel_state_dict, replicated_mismatch,
                                      shard_state_dict)

    t0 = time.perf_counter()
    cfg = get_flavor("test", vocab_size=VOCAB, dropout=0.0)
    dims = ParallelDims(tp=2, precision="fp32").validate(world, cfg)
    groups = build_groups(dims)
    tp = groups.tp
    batch = make_batch()
    inputs = model_inputs(batch)
    report = {}

    # 1. parity with the single-device model
    torch.manual_seed(0)
    reference = OFAModel(cfg).train()
    model = copy.deepcopy(reference)
    apply_tensor_parallel(model, groups)
    logits_ref, _ = reference(**inputs)
    loss_ref, _ = reference_loss(logits_ref, batch)
    loss_ref.backward()
    logits, _ = model(**inputs)
    assert logits.shape[-1] == VOCAB // 2
    assert_close(logits, shard_tensor(logits_ref, -1 % 3, tp), "logits")
    loss, _ = parallel_loss(logits, batch, tp)
    loss.backward()
    report["loss"], report["loss_ref"] = loss.item(), loss_ref.item()
    report["loss_rel"] = assert_close(loss, loss_ref, "loss")
    report["grad_rel"] = compare_grads(model, reference, tp, "tp2")
    mismatch = replicated_mismatch(model, groups, "grad")
    assert mismatch == {}, f"replicated gradients differ across TP ranks: {mismatch}"

    # 2. vocab-parallel CE options on random logits (range, valid vocab, prefix/eos, drop-worst)
    g = torch.Generator().manual_seed(3)
    full = torch.randn(3, 5, VOCAB, generator=g)
    target = torch.randint(4, 200, (3, 5), generator=g)
    target[0, -1] = 1
    conf = torch.rand(3, generator=g)
    for opts in (LossOptions(label_smoothing=0.1, constraint_range=(4, 200)),
                 LossOptions(label_smoothing=0.2, ignore_prefix_size=1, ignore_eos=True,
                             drop_worst_ratio=0.25),
                 LossOptions()):
        full_r = full.clone().requires_grad_()
        ref = label_smoothed_cross_entropy(full_r[..., :500], target, conf, options=opts, update_num=1)
        (ref.loss + ref.nll_loss).backward()
        local = shard_tensor(full, -1 % 3, tp).requires_grad_()
        out = vocab_parallel_label_smoothed_cross_entropy(local, target, conf, tp=tp, options=opts,
                                                          update_num=1, valid_vocab_size=500)
        (out.loss + out.nll_loss).backward()
        assert out.ntokens == ref.ntokens
        assert_close(out.loss, ref.loss, f"CE {opts}")
        assert_close(out.nll_loss, ref.nll_loss, f"CE nll {opts}")
        ref_grad = torch.cat([full_r.grad[..., :500], torch.zeros(3, 5, VOCAB - 500)], -1)
        assert_close(local.grad, shard_tensor(ref_grad, -1 % 3, tp), f"CE grad {opts}")

    # 3. dropout (embeddings, residual, activation, drop path, patch sampling): TP=2 == TP=1
    cfg_d = cfg.replace(dropout=0.1, activation_dropout=0.2, encoder_drop_path_rate=0.2,
                        decoder_drop_path_rate=0.2)
    torch.manual_seed(1)
    base = OFAModel(cfg_d).train()
    one, two = copy.deepcopy(base), copy.deepcopy(base)
    apply_tensor_parallel(one, SINGLE)
    apply_tensor_parallel(two, groups)
    losses = []
    for m, ctx in ((one, SINGLE), (two, tp)):
        torch.manual_seed(5)
        lg, _ = m(**inputs, sample_patch_num=3)
        lo, _ = parallel_loss(lg, batch, ctx)
        lo.backward()
        losses.append(lo)
    assert_close(losses[1], losses[0], "dropout loss")
    compare_grads(two, one, tp, "dropout")
    torch.manual_seed(5)
    no_dropout, _ = parallel_loss(two.eval()(**inputs, sample_patch_num=3)[0], batch, tp)
    assert abs(no_dropout.item() - losses[1].item()) > 1e-4, "dropout had no effect"
    report["dropout_loss"] = losses[1].item()

    # 4. TP=2 checkpoint -> single-device state dict -> same logits
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-0.5)  # move away from the initial weights
    full_sd = gather_tensor_parallel_state_dict(model, groups)
    local_again = shard_state_dict(full_sd, tp)
    for k, v in model.state_dict().items():
        assert torch.equal(local_again[k], v), f"shard(gather(x)) != x for {k}"
    single = OFAModel(cfg)
    single.load_state_dict(full_sd)
    single.eval(), model.eval()
    with torch.no_grad():
        lf, _ = single(**inputs)
        lt = gather_vocab_logits(model(**inputs)[0], tp)
    report["gather_logits_maxdiff"] = (lf - lt).abs().max().item()
    assert_close(lt, lf, "logits after gather")
    report["seconds"] = time.perf_counter() - t0
    return report
