"""GPU check of the fused kernels: parity against the references, then training-step speed.

    python benchmarks/gpu_check.py                   # full run, one H100/H200: ~3-5 min
    python benchmarks/gpu_check.py --quick           # ofa_base only, fewer steps: ~2 min
    python benchmarks/gpu_check.py --compile         # also time torch.compile'd layers
    python benchmarks/gpu_check.py --device cpu --quick   # smoke test of the script on CPU

Sections (each one guarded: an error is printed and the next section runs):

1. environment: versions and the kernel each op resolves to (same as ``ofa-ds env``);
2. peak: measured dense matmul throughput of this device in the benchmark dtype (bf16
   8192^3 on GPU), the denominator of MFU;
3. parity: every fused kernel against the plain-PyTorch reference in float32 and bf16,
   (and the speed switches of ``ofa_ds.kernels.wrap.SpeedOptions``: loss and gradients in
   training mode with the relative-bias gather, channels-last ResNet, mixed-input BatchNorm),
   forward and backward, on OFA-shaped inputs (encoder self-attention with padding and a
   full [B, H, L, L] bias, causal decoder self-attention, cross-attention, one incremental
   step), plus whole-model logits of ofa_base with every fused kernel on. The error bound
   is explained in ``ofa_ds/kernels/parity.py``: the fused path must be no less accurate
   against a float64 truth than the reference path is in the same dtype (2x, plus a small
   floor);
4. speed: full training steps (forward, backward, AdamW step) of ofa_base and ofa_large
   in bf16 on a synthetic batch (384 px images = 576 patches, 64 source and 32 target
   tokens, batch 8), for each kernel variant: step time, samples/s, tokens/s (encoder +
   decoder tokens), achieved TFLOP/s, MFU and peak memory. FLOPs per step are counted
   once per model with ``torch.utils.flop_counter`` on the unfused variant (matmuls,
   convolutions, attention) and reused for every variant.

Needs only torch (+ triton for the Triton kernels); DeepSpeed is not imported.
Exit status: 0 when every parity check passed, 1 otherwise (the speed table is printed
either way). ``--json PATH`` also writes all results.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ofa_ds import kernels  # noqa: E402
from ofa_ds.config.flavors import get_flavor  # noqa: E402
from ofa_ds.kernels import parity, registry  # noqa: E402
from ofa_ds.kernels.attention import sdpa_attention  # noqa: E402
from ofa_ds.kernels.elementwise import bias_dropout_add_eager, bias_gelu_eager  # noqa: E402
from ofa_ds.model.ofa import OFAModel  # noqa: E402
from ofa_ds.tasks.criterion import label_smoothed_cross_entropy  # noqa: E402

AUTO = {op: "auto" for op in ("attention", "bias_gelu", "bias_dropout_add")}
VARIANTS = {
    # name: (kernel choices, fused AdamW, activation checkpointing, compile)
    "unfused": ({"attention": "reference", "bias_gelu": "eager", "bias_dropout_add": "eager"}, False, False, False),
    "sdpa": ({"attention": "sdpa", "bias_gelu": "eager", "bias_dropout_add": "eager"}, False, False, False),
    "fused_sdpa": ({"attention": "sdpa", "bias_gelu": "triton", "bias_dropout_add": "triton"}, True, False, False),
    "fused_triton": ({"attention": "triton", "bias_gelu": "triton", "bias_dropout_add": "triton"}, True, False, False),
    "fused_sdpa+ckpt": ({"attention": "sdpa", "bias_gelu": "triton", "bias_dropout_add": "triton"}, True, True, False),
    # Inductor fuses the eager elementwise ops itself (Triton kernels would be opaque to it).
    "fused_sdpa+compile": ({"attention": "sdpa", "bias_gelu": "eager", "bias_dropout_add": "eager"}, True, False, True),
}


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)


def section(title: str):
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)), flush=True)


def report_error(where: str, err: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-4:])
    print(f"ERROR in {where}: {type(err).__name__}: {err}\n{tb}", flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- 2. peak -----------------------------------------------------------------------------
def measure_peak(device, dtype, quick: bool) -> float:
    """Dense matmul FLOP/s on this device in ``dtype`` (the MFU denominator)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 10 if not quick or device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


# -- 3. parity ---------------------------------------------------------------------------
def attention_impls(device) -> dict:
    impls = {"sdpa": sdpa_attention}
    if kernels.backends.triton_unavailable(device.type) is None:
        from ofa_ds.kernels.triton_attention import triton_attention

        impls["triton"] = lambda q, k, v, b, pad, causal: triton_attention(q, k, v, b, pad, causal)
    return impls


def attention_cases(args) -> list[dict]:
    L = args.patches + args.src
    heads, hd = (12, 64) if args.device.type == "cuda" else (4, 16)
    common = dict(B=2, H=heads, D=hd)
    return [
        dict(label=f"encoder self L={L}", Tq=L, Tk=L, causal=False, bias_heads=True, **common),
        dict(label=f"decoder self T={args.tgt}", Tq=args.tgt, Tk=args.tgt, causal=True, bias_heads=True, **common),
        dict(label=f"cross T={args.tgt} L={L}", Tq=args.tgt, Tk=L, causal=False, bias_heads=True, **common),
        dict(label=f"incremental 1x{args.tgt}", Tq=1, Tk=args.tgt, causal=True, bias_heads=False, **common),
    ]


def run_parity(args, results: list) -> None:
    device = args.device
    dtypes = [torch.float32, torch.bfloat16]
    triton_ok = kernels.backends.triton_unavailable(device.type)
    if triton_ok is not None:
        print(f"(Triton kernels skipped: {triton_ok})")
    for dtype in dtypes:
        for impl_name, impl in attention_impls(device).items():
            for case in attention_cases(args):
                case = dict(case)
                label = case.pop("label")
                name = f"attention[{impl_name}] {label}"
                try:
                    r = parity.check_attention(impl, name, dtype=dtype, device=device, **case)
                except Exception as err:  # keep going: report and count as a failure
                    report_error(name, err)
                    r = parity.ParityResult(name, str(dtype), passed=False, note=f"error: {err}")
                print(r.line(), flush=True)
                results.append(r)
        elementwise = []
        if triton_ok is None:
            from ofa_ds.kernels.triton_elementwise import bias_dropout_add_triton, bias_gelu_triton

            elementwise = [("bias_gelu[triton]", bias_gelu_triton, bias_dropout_add_triton)]
        else:
            elementwise = [("bias_gelu[eager]", bias_gelu_eager, bias_dropout_add_eager)]
        shape = (args.batch, args.patches + args.src, 4 * (768 if device.type == "cuda" else 64))
        for label, gelu_fn, bda_fn in elementwise:
            for fn in (lambda: [parity.check_bias_gelu(gelu_fn, label, dtype=dtype, device=device, shape=shape)],
                       lambda: parity.check_bias_dropout_add(bda_fn, label.replace("bias_gelu", "bias_dropout_add"),
                                                             dtype=dtype, device=device,
                                                             shape=shape[:-1] + (shape[-1] // 4,))):
                try:
                    for r in fn():
                        print(r.line(), flush=True)
                        results.append(r)
                except Exception as err:
                    report_error(label, err)
                    results.append(parity.ParityResult(label, str(dtype), passed=False, note=str(err)))
        if kernels.backends.apex_unavailable(device.type) is None:
            try:
                from apex.normalization import FusedLayerNorm

                r = parity.check_layer_norm(FusedLayerNorm, "layer_norm[apex]", dtype=dtype, device=device)
                print(r.line(), flush=True)
                results.append(r)
            except Exception as err:
                report_error("layer_norm[apex]", err)
        else:
            print(f"(apex LayerNorm skipped: {kernels.backends.apex_unavailable(device.type)})")
    run_model_parity(args, results)
    run_switch_parity(args, results)


def run_switch_parity(args, results: list) -> None:
    """The speed switches of issue 13 (relative-bias gather, channels-last ResNet, mixed-input
    BatchNorm) in training mode: loss and gradients against the switches off, both against a
    float64 truth. Parameters are cast as DeepSpeed casts them (BatchNorm buffers stay fp32)."""
    from ofa_ds.kernels.wrap import SpeedOptions, apply_speed_options

    device = args.device
    flavor = "base" if device.type == "cuda" else "test"
    names = ["encoder.embed_images.conv1.weight", "encoder.embed_images.bn1.weight", "encoder.image_proj.weight",
             "encoder.image_rel_pos_table_list.0.weight", "encoder.token_rel_pos_table_list.0.weight",
             "decoder.image_rel_pos_table_list.0.weight", "decoder.token_rel_pos_table_list.0.weight"]
    off = SpeedOptions(rel_pos_bias="embedding")
    switches = {"rel_gather": SpeedOptions(rel_pos_bias="gather"),
                "channels_last": SpeedOptions(rel_pos_bias="embedding", channels_last=True),
                "mixed_bn": SpeedOptions(rel_pos_bias="embedding", mixed_batchnorm=True),
                "all three": SpeedOptions(rel_pos_bias="gather", channels_last=True, mixed_batchnorm=True)}
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = OFAModel(get_flavor(flavor, dropout=0.0, encoder_drop_path_rate=0.0,
                                        decoder_drop_path_rate=0.0)).to(device).train()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        batch = synthetic_batch(model.config, 4, args.image, args.src, args.tgt, device, torch.float32)
        batch["code_masks"] = torch.tensor([False, True, False, False], device=device)

        def loss_and_grads(dtype, options):
            model.load_state_dict(state)
            for p in model.parameters():  # as DeepSpeed's bf16 engine: parameters only
                p.data = p.data.to(dtype)
            apply_speed_options(model, options, device.type)
            b = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in batch.items()}
            torch.manual_seed(1)  # the same sampled patches
            inputs = {k: v for k, v in b.items() if k != "target"}
            logits, _ = model(**inputs, sample_patch_num=max(args.patches // 2, 1))
            out = label_smoothed_cross_entropy(logits, b["target"], pad=model.config.pad)
            params = dict(model.named_parameters())
            grads = torch.autograd.grad(out.loss, [params[n] for n in names])
            return {"loss": out.loss.detach().double(), **{n: g.double() for n, g in zip(names, grads)}}

        truth = loss_and_grads(torch.float64, off)
        for dtype in (torch.float32, torch.bfloat16):
            ref = loss_and_grads(dtype, off)
            for label, options in switches.items():
                if device.type == "cpu" and dtype == torch.float32 and options.channels_last:
                    # oneDNN's NHWC weight gradient of the 3-channel first convolution is ~6e-4
                    # off the float64 truth (NCHW: ~2e-6); channels-last is a CUDA/bf16 option.
                    print(f"(switch {label} float32 skipped on CPU: oneDNN NHWC conv1 weight gradient)")
                    continue
                got = loss_and_grads(dtype, options)
                r = parity.ParityResult(f"switch {label} ofa_{flavor} loss+grads", str(dtype).removeprefix("torch."))
                results.append(parity._judge(r, got, ref, truth))
                print(r.line(), flush=True)
    except Exception as err:
        report_error("speed switch parity", err)
        results.append(parity.ParityResult("speed switch parity", "-", passed=False, note=str(err)))
    finally:
        from ofa_ds.model.resnet import set_mixed_input_batchnorm

        kernels.set_impl("rel_pos_bias", "auto")
        set_mixed_input_batchnorm(False)


def run_model_parity(args, results: list) -> None:
    """Whole-model logits, eval mode: every fused kernel on vs the reference path."""
    device = args.device
    flavor = "base" if device.type == "cuda" else "test"
    try:
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU (fast); .to() moves CPU-built buffers
            model = OFAModel(get_flavor(flavor)).to(device).eval()
        batch = synthetic_batch(model.config, 2, args.image, args.src, args.tgt, device, torch.float32)
        choices = [("sdpa", "eager")]
        if kernels.backends.triton_unavailable(device.type) is None:
            choices = [("sdpa", "triton"), ("triton", "triton")]

        def logits(dtype, attention="reference", elementwise="eager"):
            kernels.configure({"attention": attention, "bias_gelu": elementwise, "bias_dropout_add": elementwise})
            model.to(dtype)
            b = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in batch.items()}
            with torch.no_grad():
                out = model(**{k: v for k, v in b.items() if k != "target"})[0].double()
            return out

        truth = logits(torch.float64)
        for dtype in (torch.float32, torch.bfloat16):
            ref = logits(dtype)
            for attention, elementwise in choices:
                name = f"model ofa_{flavor} logits [{attention}+{elementwise}]"
                got = logits(dtype, attention, elementwise)
                r = parity.ParityResult(name, str(dtype).removeprefix("torch."))
                results.append(parity._judge(r, {"logits": got}, {"logits": ref}, {"logits": truth}))
                print(r.line(), flush=True)
    except Exception as err:
        report_error("model parity", err)
        results.append(parity.ParityResult("model parity", "-", passed=False, note=str(err)))
    finally:
        kernels.configure(AUTO)


# -- 4. speed ----------------------------------------------------------------------------
def synthetic_batch(cfg, B, image, src, tgt, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    src_tokens = torch.randint(4, cfg.vocab_size, (B, src), generator=g)
    src_tokens[:, 0], src_tokens[:, -1] = cfg.bos, cfg.eos
    tokens = torch.randint(4, cfg.vocab_size, (B, tgt + 1), generator=g)
    tokens[:, 0] = cfg.bos
    return dict(src_tokens=src_tokens.to(device), prev_output_tokens=tokens[:, :-1].to(device),
                target=tokens[:, 1:].to(device),
                patch_images=torch.randn(B, 3, image, image, generator=g).to(device=device, dtype=dtype),
                patch_masks=torch.ones(B, dtype=torch.bool, device=device))


def train_step(model, batch, optimizer) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "target"}
    logits, _ = model(**inputs)
    out = label_smoothed_cross_entropy(logits, batch["target"], pad=model.config.pad)
    loss = out.loss / out.ntokens
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def count_flops(model, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    kernels.configure(VARIANTS["unfused"][0])
    with FlopCounterMode(display=False) as counter:
        inputs = {k: v for k, v in batch.items() if k != "target"}
        logits, _ = model(**inputs)
        out = label_smoothed_cross_entropy(logits, batch["target"], pad=model.config.pad)
        (out.loss / out.ntokens).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def build_model(flavor: str, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU (fast); .to() moves CPU-built buffers
        model = OFAModel(get_flavor(flavor))
    return model.to(device=device, dtype=dtype).train()


def bench_variant(model, batch, variant, args, flops, peak) -> dict:
    choices, fused_adam, ckpt, compile_ = VARIANTS[variant]
    device = args.device
    kernels.configure(choices)
    if ckpt:
        kernels.apply_activation_checkpointing(model)
    if compile_:
        kernels.maybe_compile(model)
    adam_kwargs = {"fused": True} if fused_adam and device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **adam_kwargs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = train_step(model, batch, optimizer)
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = train_step(model, batch, optimizer)
        sync(device)
        times.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]  # median
    B = batch["src_tokens"].shape[0]
    tokens = B * (args.patches + args.src + args.tgt)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(variant=variant, step_ms=step * 1e3, samples_s=B / step, tokens_s=tokens / step,
                tflops=flops / step / 1e12, mfu=flops / step / peak, mem_gib=mem,
                loss=float(loss), warmup_s=warm_s, optimizer="AdamW(fused)" if adam_kwargs else "AdamW(foreach)")


def run_speed(args, peak: float, budget: Budget) -> list[dict]:
    rows = []
    for flavor in args.models:
        if budget.left() < 30:
            print(f"(skipping {flavor}: time budget used up)")
            continue
        model = None
        try:
            model = build_model(flavor, args.device, args.dtype)
            batch = synthetic_batch(model.config, args.batch, args.image, args.src, args.tgt, args.device, args.dtype)
            flops = count_flops(model, batch)
            print(f"ofa_{flavor}: {model.num_parameters() / 1e6:.1f} M parameters, "
                  f"{flops / 1e12:.2f} TFLOP per training step (counted)", flush=True)
        except Exception as err:
            report_error(f"building ofa_{flavor}", err)
            continue
        for variant in args.variants:
            if budget.left() < 20:
                print(f"(skipping {flavor}/{variant}: time budget used up)")
                continue
            _, _, ckpt, compile_ = VARIANTS[variant]
            if "triton" in VARIANTS[variant][0].values() and \
                    kernels.backends.triton_unavailable(args.device.type) is not None:
                print(f"(skipping {variant}: {kernels.backends.triton_unavailable(args.device.type)})")
                continue
            try:
                # Checkpointing and compile modify the model in place: give them a fresh one.
                m = build_model(flavor, args.device, args.dtype) if (ckpt or compile_) else model
                row = bench_variant(m, batch, variant, args, flops, peak)
                row["model"] = f"ofa_{flavor}"
                rows.append(row)
                print(f"  {variant:<20} {row['step_ms']:8.1f} ms/step  MFU {row['mfu']:.1%}  "
                      f"(warm-up {row['warmup_s']:.1f} s)", flush=True)
                if m is not model:
                    del m
            except Exception as err:
                report_error(f"ofa_{flavor}/{variant}", err)
            finally:
                kernels.configure(AUTO)
                if args.device.type == "cuda":
                    torch.cuda.empty_cache()
        del model
    return rows


def print_table(rows: list[dict], peak: float, dtype) -> None:
    print(f"\npeak (measured {str(dtype).removeprefix('torch.')} matmul): {peak / 1e12:.3g} TFLOP/s")
    header = (f"{'model':<10} {'variant':<20} {'optimizer':<15} {'ms/step':>8} {'samples/s':>9} "
              f"{'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'mem GiB':>7} {'speedup':>7} {'loss':>7}")
    print(header)
    print("-" * len(header))
    base = {r["model"]: r["step_ms"] for r in rows if r["variant"] == "unfused"}
    for r in rows:
        speedup = base.get(r["model"], math.nan) / r["step_ms"]
        print(f"{r['model']:<10} {r['variant']:<20} {r['optimizer']:<15} {r['step_ms']:8.1f} "
              f"{r['samples_s']:9.1f} {r['tokens_s']:9.0f} {r['tflops']:8.1f} {r['mfu']:6.1%} "
              f"{r['mem_gib']:7.1f} {speedup:7.2f} {r['loss']:7.3f}")
    print("(median of the timed steps; loss = last step's, and variants without checkpointing/compile share "
          "one model that keeps training, so it is a sanity check, not a parity check)")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="ofa_base only, fewer steps (CPU: test flavor, tiny batch)")
    p.add_argument("--models", default=None, help="comma list of flavors (default base,large)")
    p.add_argument("--variants", default=None, help=f"comma list from {list(VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="add the fused_sdpa+compile variant")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--image", type=int, default=None, help="image side in pixels (patches = (side/16)^2)")
    p.add_argument("--src", type=int, default=None)
    p.add_argument("--tgt", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds; later sections are skipped past it")
    p.add_argument("--json", default=None, help="write all results to this file")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    cpu = args.device.type == "cpu"
    defaults = dict(batch=2 if cpu else 8, image=64 if cpu else 384, src=16 if cpu else 64, tgt=8 if cpu else 32,
                    steps=2 if cpu else (5 if args.quick else 10), warmup=1 if cpu else (2 if args.quick else 3))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = (args.models or ("test" if cpu else "base" if args.quick else "base,large")).split(",")
    names = args.variants.split(",") if args.variants else ["unfused", "sdpa", "fused_sdpa", "fused_triton"]
    if args.compile and "fused_sdpa+compile" not in names:
        names.append("fused_sdpa+compile")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.variants = names
    # No fast bf16 on most CPUs: the CPU smoke test runs in float32.
    args.dtype = torch.float32 if cpu else torch.bfloat16
    args.patches = (args.image // 16) ** 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.time_budget)
    results: list = []
    rows: list = []
    peak = float("nan")

    section("environment")
    try:
        from ofa_ds.kernels.env import report

        print(report(args.device.type, offload=False))
        if args.device.type == "cuda":
            print(f"device     {torch.cuda.get_device_name()}  (capability {torch.cuda.get_device_capability()})")
        print(f"settings   batch {args.batch}, image {args.image}px ({args.patches} patches), src {args.src}, "
              f"tgt {args.tgt}, dtype {args.dtype}, steps {args.steps} (+{args.warmup} warm-up)")
    except Exception as err:
        report_error("environment", err)

    section("peak matmul throughput")
    try:
        peak = measure_peak(args.device, args.dtype, args.quick)
        print(f"{str(args.dtype).removeprefix('torch.')} matmul: {peak / 1e12:.3g} TFLOP/s")
    except Exception as err:
        report_error("peak", err)

    if not args.skip_parity:
        section("parity: fused vs reference (float64 truth; bound = 2 x reference error + floor)")
        try:
            run_parity(args, results)
        except Exception as err:
            report_error("parity", err)
            results.append(parity.ParityResult("parity section", "-", passed=False, note=str(err)))
        n_fail = sum(not r.passed for r in results)
        print(f"parity: {len(results) - n_fail} passed, {n_fail} failed", flush=True)

    if not args.skip_speed:
        section(f"training step speed ({', '.join('ofa_' + m for m in args.models)})")
        try:
            rows = run_speed(args, peak, budget)
            print_table(rows, peak, args.dtype)
        except Exception as err:
            report_error("speed", err)

    print(f"\ntotal time {time.time() - budget.start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": torch.cuda.get_device_name() if args.device.type == "cuda" else "cpu",
            "peak_flops": peak,
            "parity": [vars(r) for r in results],
            "speed": rows,
            "kernels": registry.describe(args.device.type),
        }, indent=1, default=str))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
