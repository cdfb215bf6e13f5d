"""``ofa-ds bench train``: training-step throughput, FLOPs and MFU, per option.

One pretraining step = the vision-language group (2 samples per row, ``--image-size``,
``--sample-patch-num`` patches kept) + the extras group (1 extras set per 8 rows, 256 px)
forward, OFA's loss, backward and an AdamW step, on synthetic tokens of OFA's lengths.
No DeepSpeed here: this measures the model and its kernels (``--engine model``, the default
on CPU). ``--engine deepspeed`` (the default on CUDA) runs ``ofa_ds/engine/bench_engine.py``:
the same step through the DeepSpeed engine, ZeRO 1/2, bf16, micro-batch sweep and profile.

Variants run interleaved (A B A B ...) under one allocator setting, and the medians are
compared, because a shared CPU host drifts. FLOPs are counted per component
(``ofa_ds.engine.flops``); MFU is against a matmul peak measured in this process.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.engine.flops import measure_matmul_peak, training_step_flops
from ofa_ds.model.ofa import OFAModel
from ofa_ds.tasks.criterion import label_smoothed_cross_entropy

VARIANTS = ("base", "checkpointing", "sdpa", "compile", "rel_gather", "channels_last")


def pin_malloc(threshold_bytes: int) -> None:
    """Fix glibc's mmap threshold (it adapts at run time and can swing a CPU step 4x)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)
    except OSError:
        pass


def synthetic_batch(vocab: int, rows: int, image: int, extras_image: int, src: int, tgt: int, device):
    g = torch.Generator().manual_seed(0)

    def group(n, size, code):
        s = torch.randint(4, vocab, (n, src), generator=g)
        s[:, 0], s[:, -1] = 0, 2
        t = torch.randint(4, vocab, (n, tgt), generator=g)
        prev = torch.cat([torch.zeros(n, 1, dtype=torch.long), t[:, :-1]], 1)
        net = dict(src_tokens=s, src_lengths=torch.full((n,), src), prev_output_tokens=prev,
                   patch_images=torch.randn(n, 3, size, size, generator=g),
                   patch_masks=torch.ones(n, dtype=torch.bool),
                   code_masks=torch.full((n,), code, dtype=torch.bool) if code is not None else None)
        net = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in net.items()}
        return net, t.to(device), torch.ones(n, device=device)

    extras = max(rows // 8, 1) * 4
    return [group(2 * rows, image, None), group(extras, extras_image, False)]


def activate(variant: str) -> None:
    """The process-wide kernel switches of ``variant`` (variants run interleaved)."""
    from ofa_ds.kernels import set_impl

    set_impl("attention", "sdpa" if variant == "sdpa" else "auto")
    set_impl("rel_pos_bias", "gather" if variant == "rel_gather" else "auto")


def build(variant: str, args, device):
    torch.manual_seed(0)
    model = OFAModel(get_flavor(args.flavor, dropout=0.1, encoder_drop_path_rate=0.1,
                                decoder_drop_path_rate=0.1)).to(device).train()
    if variant == "checkpointing":
        from ofa_ds.kernels.wrap import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    if variant == "compile":
        from ofa_ds.kernels.wrap import maybe_compile

        model = maybe_compile(model)
    if variant == "channels_last":
        model.encoder.embed_images.use_channels_last(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01,
                            fused=device.type == "cuda")
    return model, opt


def step(model, opt, batch, sample_patch_num):
    loss = 0.0
    for i, (net, target, conf) in enumerate(batch):
        logits, _ = model(**net, sample_patch_num=sample_patch_num if i == 0 else None)
        out = label_smoothed_cross_entropy(logits, target, conf)
        loss = loss + out.loss / out.ntokens
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--engine", choices=("model", "deepspeed"), default=None)
    pre.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    known, rest = pre.parse_known_args(argv)
    engine = known.engine or ("deepspeed" if known.device.startswith("cuda") else "model")
    if engine == "deepspeed":  # the pretraining step through DeepSpeed, ZeRO 1/2, sweeps, profile
        from ofa_ds.engine.bench_engine import main as engine_main

        return engine_main(rest + ["--device", known.device])
    argv = rest + ["--device", known.device]
    p = argparse.ArgumentParser(prog="ofa-ds bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("model", "deepspeed"), default="model",
                   help="model: this bare loop (default on CPU); deepspeed: ofa_ds/engine/bench_engine.py "
                        "(default on CUDA)")
    p.add_argument("--flavor", default="tiny")
    p.add_argument("--rows", type=int, default=8, help="vision-language rows per step (a multiple of 8)")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--extras-image-size", type=int, default=256)
    p.add_argument("--sample-patch-num", type=int, default=196, help="patches kept per VL image (0: all)")
    p.add_argument("--src-len", type=int, default=40)
    p.add_argument("--tgt-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    p.add_argument("--variants", default="base,checkpointing", help=f"comma list of {VARIANTS}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--malloc-mmap-threshold", type=int, default=256 << 20)
    args = p.parse_args(argv)
    args.sample_patch_num = args.sample_patch_num or None
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    pin_malloc(args.malloc_mmap_threshold)
    device = torch.device(args.device)
    cfg = get_flavor(args.flavor)
    batch = synthetic_batch(cfg.vocab_size, args.rows, args.image_size, args.extras_image_size,
                            args.src_len, args.tgt_len, device)
    groups = [(args.image_size, args.src_len, args.tgt_len, 2 * args.rows, args.sample_patch_num),
              (args.extras_image_size, args.src_len, args.tgt_len, batch[1][1].shape[0], None)]
    flops = training_step_flops(cfg, groups)
    peak = measure_matmul_peak(device, torch.float32)
    built = {v: build(v, args, device) for v in variants}
    times = {v: [] for v in variants}
    losses = {v: [] for v in variants}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for v in variants:  # warm-up (allocator, compile)
        activate(v)
        step(*built[v], batch, args.sample_patch_num)
    for _ in range(args.steps):
        for v in variants:
            activate(v)
            sync()
            t0 = time.perf_counter()
            losses[v].append(step(*built[v], batch, args.sample_patch_num))
            sync()
            times[v].append(time.perf_counter() - t0)
    samples = 2 * args.rows + batch[1][1].shape[0]
    tokens = sum(int(t.numel()) + int(n["src_tokens"].numel()) for n, t, _ in batch)
    print(f"flavor {args.flavor}, device {device}, {samples} samples/step ({2 * args.rows} VL at "
          f"{args.image_size}px with {args.sample_patch_num} patches, {batch[1][1].shape[0]} extras at "
          f"{args.extras_image_size}px)")
    print("model FLOPs per step (fwd+bwd): " + ", ".join(
        f"{k} {v / 1e9:.1f} G" for k, v in flops.items()))
    print(f"matmul peak (fp32, this process): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<14}{'step s (median)':>16}{'samples/s':>11}{'tokens/s':>10}{'MFU':>8}{'vs base':>9}")
    base = statistics.median(times[variants[0]])
    for v in variants:
        med = statistics.median(times[v])
        print(f"{v:<14}{med:>16.3f}{samples / med:>11.2f}{tokens / med:>10.0f}"
              f"{flops['total'] / med / peak:>8.1%}{base / med:>8.2f}x")
    activate("base")
    return 0
