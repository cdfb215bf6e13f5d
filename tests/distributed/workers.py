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
                patch_masks=torch.arange(B) != 1,
                code_masks=torch.arange(B) == B - 1 if B < 4 else torch.arange(B) == 2,
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

    # 3b. attention dropout (per-rank forked generator): runs, leaves the default generator
    # in step across TP ranks, keeps the loss and the replicated gradients identical.
    torch.manual_seed(2)
    attn = OFAModel(cfg_d.replace(attention_dropout=0.3)).train()
    apply_tensor_parallel(attn, groups)
    torch.manual_seed(6)
    lo, _ = parallel_loss(attn(**inputs)[0], batch, tp)
    lo.backward()
    states = [None] * tp.size
    torch.distributed.all_gather_object(states, (lo.item(), torch.get_rng_state().sum().item()), group=tp.group)
    assert len(set(states)) == 1, f"TP ranks diverged under attention dropout: {states}"
    mismatch = replicated_mismatch(attn, groups, "grad")
    assert mismatch == {}, f"replicated gradients differ under attention dropout: {mismatch}"

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


# --------------------------------------------------------------------------------------------
LR, CLIP = 1e-3, 1.0


def ds_config(stage: int, micro: int = 2, gas: int = 1, dp: int = 1, **extra) -> dict:
    """fp32, torch AdamW (no JIT-compiled op), clipping on so the global grad norm across
    TP/PP ranks is part of what the parity checks."""
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": gas,
              "train_batch_size": micro * gas * dp, "gradient_clipping": CLIP,
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    config.update(extra)
    return config


def reference_training(cfg, state_dict, steps: list[list[dict]]) -> list[list[float]]:
    """Single-device AdamW + clipping; each step averages the gradients of its micro-batches
    (= gradient accumulation, or data parallelism over them). Returns the micro-batch
    losses of every step."""
    model = OFAModel(cfg).train()
    model.load_state_dict(state_dict)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    out = []
    for micro_batches in steps:
        opt.zero_grad()
        losses = []
        for b in micro_batches:
            loss, _ = reference_loss(model(**model_inputs(b))[0], b)
            (loss / len(micro_batches)).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        out.append(losses)
    return out


def pp_parity(rank: int, world: int, ckpt_dir: str, tp: int) -> dict:
    """PP=2 (x TP=tp) DeepSpeed pipeline vs a single-device AdamW loop: 3 optimizer steps of
    2 micro-batches whose shapes change every step (dynamic_shape), ZeRO-1, clipping; then
    a checkpoint round trip that must restore the tied embedding on both stages."""
    from ofa_ds.parallel import (ParallelDims, build_groups, build_pipeline_module, deepspeed_initialize,
                                 make_pipeline_loss_fn)
    from ofa_ds.parallel.pipeline import load_single_state_dict, pipeline_batch

    t0 = time.perf_counter()
    cfg = get_flavor("test", vocab_size=VOCAB, dropout=0.0)
    config = ds_config(stage=1, gas=2)
    if tp > 1:
        config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    dims = ParallelDims(pp=2, tp=tp, zero_stage=1, precision="fp32").validate(world, cfg, config)
    groups = build_groups(dims)
    torch.manual_seed(0)
    state_dict = OFAModel(cfg).state_dict()
    loss_fn = make_pipeline_loss_fn(groups.tp if tp > 1 else None, OPTIONS)
    module = build_pipeline_module(cfg, dims, groups, loss_fn, state_dict=state_dict, image_size=32,
                                   text_len=8, tgt_len=7)
    engine, *_ = deepspeed_initialize(module, groups, config, model_parameters=list(module.parameters()))
    steps = [[make_batch(B=2, S=7 + k, T=6 + k, image=32 + 16 * (k % 2), seed=10 * k + m) for m in range(2)]
             for k in range(3)]
    t1 = time.perf_counter()
    losses = [engine.train_batch(iter([pipeline_batch(b) for b in mbs])).item() for mbs in steps]
    train_s = time.perf_counter() - t1
    expected = [sum(ls) / len(ls) for ls in reference_training(cfg, state_dict, steps)]
    for k, (got, want) in enumerate(zip(losses, expected)):
        assert_close(torch.tensor(got), torch.tensor(want), f"pp2xtp{tp} loss at step {k}")

    # The tied embedding lives on stage 0 (saved there) and on the last stage.
    tied = module.tied_modules["embed_tokens"].encoder.embed_tokens.weight
    engine.save_checkpoint(ckpt_dir, tag="t")
    saved = tied.detach().clone()
    with torch.no_grad():
        tied.add_(1.0)
    from ofa_ds.engine.safe_load import guard_deepspeed_loads

    guard_deepspeed_loads(engine)  # the pipeline's layer files load with weights_only=True too
    engine.load_checkpoint(ckpt_dir, tag="t")
    assert torch.equal(tied.detach(), saved), "tied embedding not restored from the checkpoint"

    report = {"losses": losses, "expected": expected, "parts": module.parts, "train_s": train_s}
    if tp == 1 and rank == 0:
        # The sequential twin is the single-device model, piece by piece.
        seq = module.to_sequential()
        load_single_state_dict(seq, state_dict)
        b = steps[0][0]
        inputs, labels = pipeline_batch(b)
        single = OFAModel(cfg)
        single.load_state_dict(state_dict)
        got = seq.loss_fn(seq(inputs), labels)
        want, _ = reference_loss(single(**model_inputs(b))[0], b)
        assert_close(got, want, "to_sequential loss")
    report["seconds"] = time.perf_counter() - t0
    return report


def zero3_tp(rank: int, world: int) -> dict:
    """ZeRO-3 and ZeRO-3 + CPU offload (params and optimizer) x TP=2 x DP=world/2 vs a
    single-device AdamW loop over 3 steps; plus the zero.Init traps."""
    import deepspeed
    from ofa_ds.parallel import ParallelDims, apply_tensor_parallel, build_groups, deepspeed_initialize, zero_init
    from ofa_ds.parallel.engine_glue import check_zero3_partitioning

    t0 = time.perf_counter()
    cfg = get_flavor("test", vocab_size=VOCAB, dropout=0.0)
    dp = world // 2
    report = {}
    for offload in (False, True):
        config = ds_config(stage=3, dp=dp)
        if offload:
            config["zero_optimization"].update(offload_param={"device": "cpu"}, offload_optimizer={"device": "cpu"})
        dims = ParallelDims(tp=2, zero_stage=3, offload=offload, precision="fp32").validate(world, cfg, config)
        groups = build_groups(dims)
        torch.manual_seed(0)
        single = OFAModel(cfg)
        state_dict = copy.deepcopy(single.state_dict())
        apply_tensor_parallel(single, groups)
        engine, *_ = deepspeed_initialize(single, groups, config, model_parameters=list(single.parameters()))
        # step k: DP rank r trains on micro-batch r; the reference averages them.
        steps = [[make_batch(B=2, S=6 + k, T=5 + k, seed=100 * k + r) for r in range(dp)] for k in range(3)]
        losses = []
        for micro_batches in steps:
            b = micro_batches[groups.dp_rank]
            loss, _ = parallel_loss(engine(**model_inputs(b))[0], b, groups.tp)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        expected = [mbs[groups.dp_rank] for mbs in reference_training(cfg, state_dict, steps)]
        for k, (got, want) in enumerate(zip(losses, expected)):
            assert_close(torch.tensor(got), torch.tensor(want), f"zero3 offload={offload} loss at step {k}")
        report[f"offload={offload}"] = {"losses": losses, "expected": expected}
        engine.destroy()

    # Trap: zero.Init without the DP group partitions over the whole world.
    config = ds_config(stage=3, dp=dp)
    dims = ParallelDims(tp=2, zero_stage=3, precision="fp32").validate(world, cfg, config)
    groups = build_groups(dims)
    # (no train_batch_size: without an mpu DeepSpeed checks it against the whole world)
    bare = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=bare):
        wrong = torch.nn.Linear(8, 6)
    try:
        check_zero3_partitioning(wrong, groups)
        raise AssertionError("a world-partitioned ZeRO-3 module passed the DP-group check")
    except ValueError as e:
        assert "data_parallel_group" in str(e)
    with zero_init(groups, config):
        # init_weights=False: init_ofa_weights indexes rows of partitioned (empty) tensors
        right = OFAModel(cfg, init_weights=False)
    check_zero3_partitioning(right, groups)
    try:
        apply_tensor_parallel(right, groups)
        raise AssertionError("the TP plan accepted ZeRO-3 partitioned parameters")
    except ValueError as e:
        assert "partitioned" in str(e)
    report["seconds"] = time.perf_counter() - t0
    return report
