"""``ofa-ds bench train --engine deepspeed``: the pretraining step as users run it, per option.

The model runs inside ``deepspeed.initialize`` with the DeepSpeed JSON the trainer generates
(``build_ds_config``: ZeRO stage, bf16, the registry's Adam), on OFA's pretraining batch:
the vision-language group (2 samples per row, 384 px, 196 of the 576 patches kept) plus the
extras group at 256 px (per 8 rows: 2 text infilling samples without an image, 1 image
infilling sample with its 257 code targets, 1 detection sample). Sections, in priority order,
each skipped once ``--time-budget`` is spent:

1. the dense matmul peak of this device in the benchmark dtype (the MFU denominator);
2. per flavor, the first ZeRO stage: every ``--variants`` entry at ``--rows``, interleaved
   (A B A B ... for ``--rounds``), so each optimisation is measured alone against ``today``;
3. a torch.profiler breakdown of the ``--profile`` variants: device busy time against wall
   time, and the top kernels;
4. the micro-batch sweep of ``--sweep-variant`` over ``--sweep`` row counts, until one does
   not fit (out of memory) or the budget ends;
5. the other ZeRO stages: ``today`` and the sweep variant at ``--rows``.

Reported per run: ms/step (median), samples/s, model FLOPs per component (counted, not 6N),
TFLOP/s, MFU, peak memory. ``--json`` writes everything. On CPU the same code runs as a smoke
test (``--device cpu --flavors test`` with small images, fp32).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ofa_ds.config.flavors import get_flavor
from ofa_ds.engine.flops import measure_matmul_peak, training_step_flops
from ofa_ds.kernels.wrap import SpeedOptions

# Today's defaults, spelled out: the embedding lookup is what the model used before the
# gather existed (rel_pos_bias "auto" is now the gather on CUDA).
TODAY = SpeedOptions(rel_pos_bias="embedding")
BEST = replace(TODAY, rel_pos_bias="gather", channels_last=True, mixed_batchnorm=True, compile="all",
               cudnn_benchmark=True)


@dataclass
class Variant:
    name: str
    options: SpeedOptions
    optimizer: str = "auto"
    about: str = ""


VARIANTS = {v.name: v for v in (
    Variant("today", TODAY, about="the trainer's defaults before issue 13"),
    Variant("rel_gather", replace(TODAY, rel_pos_bias="gather"), about="relative bias: gather + index_add_"),
    Variant("channels_last", replace(TODAY, channels_last=True), about="NHWC ResNet"),
    Variant("cudnn_benchmark", replace(TODAY, cudnn_benchmark=True), about="cuDNN autotuning"),
    Variant("mixed_bn", replace(TODAY, mixed_batchnorm=True), about="BatchNorm without cast copies"),
    Variant("compile_resnet", replace(TODAY, compile="resnet"), about="torch.compile of the ResNet"),
    Variant("compile_layers", replace(TODAY, compile="layers"), about="torch.compile per transformer layer"),
    Variant("cuda_graphs", replace(TODAY, compile="all", cuda_graphs=True), about="compile all + CUDA graphs"),
    Variant("foreach_adam", TODAY, optimizer="torch_adamw", about="unfused AdamW (shows what fused Adam buys)"),
    Variant("best_eager", replace(BEST, compile="none"), about="best without compile (quick to build)"),
    Variant("best", BEST, about="every switch that is numerically neutral, no CUDA graphs"),
    Variant("best+graphs", replace(BEST, cuda_graphs=True), about="best with CUDA graphs"),
)}


@dataclass
class Shape:
    image: int = 384
    extras_image: int = 256
    sample_patch_num: int | None = 196
    src: int = 40
    tgt: int = 20
    extras_tgt: int = 257
    """Target length of the extras group: an image-infilling sample has (128/8)^2 codes + eos."""


def flavor_config(flavor: str, args):
    overrides = dict(dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1)
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    return get_flavor(flavor, **overrides)


def pretraining_batch(vocab: int, rows: int, shape: Shape, device, dtype, seed: int = 0):
    """[(net_input, target, conf)] for the VL group and the extras group, on ``device`` with
    images in ``dtype`` (as the trainer's ``move_to`` leaves them)."""
    g = torch.Generator().manual_seed(seed)

    def group(n, size, tgt, code, has_image):
        s = torch.randint(4, vocab, (n, shape.src), generator=g)
        s[:, 0], s[:, -1] = 0, 2
        t = torch.randint(4, vocab, (n, tgt), generator=g)
        prev = torch.cat([torch.zeros(n, 1, dtype=torch.long), t[:, :-1]], 1)
        net = dict(src_tokens=s, src_lengths=torch.full((n,), shape.src), prev_output_tokens=prev,
                   patch_images=torch.randn(n, 3, size, size, generator=g).to(dtype),
                   patch_masks=torch.tensor(has_image, dtype=torch.bool),
                   code_masks=None if code is None else torch.tensor(code, dtype=torch.bool))
        net = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in net.items()}
        return net, t.to(device), torch.ones(n, device=device)

    sets = max(rows // 8, 1)
    # Per 8 rows: text infilling x2 (no image), image infilling (codes), detection.
    code = [False, False, True, False] * sets
    has_image = [False, False, True, True] * sets
    return [group(2 * rows, shape.image, shape.tgt, None, [True] * (2 * rows)),
            group(4 * sets, shape.extras_image, shape.extras_tgt, code, has_image)]


def group_shapes(batch, shape: Shape):
    """(image side, src, tgt, n, sampled patches) per group, for ``training_step_flops``."""
    return [(net["patch_images"].shape[-1], net["src_tokens"].shape[1], net["prev_output_tokens"].shape[1],
             net["src_tokens"].shape[0], shape.sample_patch_num if i == 0 else None)
            for i, (net, _, _) in enumerate(batch)]


def samples_in(batch) -> int:
    return sum(int(t.shape[0]) for _, t, _ in batch)


class Run:
    """One DeepSpeed engine for (flavor, variant, ZeRO stage)."""

    def __init__(self, flavor: str, variant: Variant, zero: int, args, device):
        import deepspeed

        from ofa_ds.config.schema import TrainConfig
        from ofa_ds.engine.ds_config import build_ds_config
        from ofa_ds.kernels.wrap import apply_speed_options
        from ofa_ds.model.ofa import OFAModel

        self.variant, self.zero, self.flavor = variant, zero, flavor
        cfg = TrainConfig()
        cfg.train.precision, cfg.train.zero_stage, cfg.train.micro_batch = args.precision, zero, args.rows
        cfg.train.optimizer = variant.optimizer
        cfg.optim.clip_norm = 1.0
        ds_config = build_ds_config(cfg, on_gpu=device.type == "cuda")
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the device (fast for the large flavors)
            model = OFAModel(flavor_config(flavor, args))
        model = model.to(device).train()
        self.config = model.config
        self.activate()
        apply_speed_options(model, variant.options, device.type, compile_backend=args.compile_backend)
        self.engine, *_ = deepspeed.initialize(model=model, config=ds_config,
                                               model_parameters=[p for p in model.parameters()])
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
        self.sample_patch_num = args.shape.sample_patch_num

    def activate(self) -> None:
        """Process-wide switches of this variant (runs are interleaved)."""
        from ofa_ds.kernels import set_impl
        from ofa_ds.model.resnet import set_mixed_input_batchnorm

        o = self.variant.options
        set_impl("rel_pos_bias", o.rel_pos_bias)
        set_mixed_input_batchnorm(o.mixed_batchnorm)
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = o.cudnn_benchmark

    def step(self, batch) -> float:
        from ofa_ds.tasks.criterion import label_smoothed_cross_entropy

        loss = 0.0
        for i, (net, target, conf) in enumerate(batch):
            logits, _ = self.engine(**net, sample_patch_num=self.sample_patch_num if i == 0 else None)
            out = label_smoothed_cross_entropy(logits, target, conf)
            loss = loss + out.loss / out.ntokens
        self.engine.backward(loss)
        self.engine.step()
        return float(loss.detach())

    def close(self) -> None:
        if hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = None


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(run: Run, batch, n: int, device) -> list[float]:
    run.activate()
    times = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        run.step(batch)
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def peak_memory_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def row(run: Run, rows: int, batch, times, flops, peak, device, warmup_s) -> dict:
    med = statistics.median(times)
    return dict(flavor=run.flavor, variant=run.variant.name, zero=run.zero, rows=rows, samples=samples_in(batch),
                step_ms=med * 1e3, samples_s=samples_in(batch) / med, tflops=flops["total"] / med / 1e12,
                mfu=flops["total"] / med / peak, mem_gib=peak_memory_gib(device), warmup_s=warmup_s,
                steps=len(times), flops={k: v / 1e12 for k, v in flops.items()})


def profile_breakdown(run: Run, batch, device, steps: int = 3, top: int = 12) -> dict:
    """Device busy time per step against wall time, and the top kernels by device time."""
    from torch.profiler import ProfilerActivity, profile

    run.activate()
    run.step(batch)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            run.step(batch)
        sync(device)
        wall_ms = (time.perf_counter() - t) / steps * 1e3
    events = prof.key_averages()
    if device.type == "cuda":
        attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    else:
        attr, kernels = "self_cpu_time_total", list(events)
    busy_ms = sum(getattr(e, attr) for e in kernels) / 1e3 / steps
    kernels.sort(key=lambda e: getattr(e, attr), reverse=True)
    return dict(variant=run.variant.name, flavor=run.flavor, wall_ms=wall_ms, busy_ms=busy_ms,
                busy=busy_ms / wall_ms, top=[(e.key[:90], getattr(e, attr) / 1e3 / steps, e.count // steps)
                                             for e in kernels[:top]])


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)

    def spent(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return False
        print(f"(skipped {what}: {self.left():.0f} s of the time budget left, needs ~{need:.0f} s)", flush=True)
        return True


def need(variant: Variant, args) -> float:
    """Seconds a variant needs to build, warm up and time (compiles take minutes on GPU)."""
    return args.need_per_variant * (4 if variant.options.compile != "none" else 1)


def report_error(where: str, err: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
    print(f"ERROR in {where}: {type(err).__name__}: {err}\n{tb}", flush=True)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def print_rows(rows: list[dict], title: str) -> None:
    if not rows:
        return
    print(f"\n{title}")
    print(f"{'flavor':<7}{'variant':<16}{'zero':>5}{'rows':>6}{'samples':>8}{'ms/step':>10}{'samples/s':>11}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'mem GiB':>9}{'vs today':>9}")
    base = {(r["flavor"], r["zero"], r["rows"]): r["step_ms"] for r in rows if r["variant"] == "today"}
    for r in rows:
        ref = base.get((r["flavor"], r["zero"], r["rows"]))
        speed = f"{ref / r['step_ms']:.2f}x" if ref else "-"
        print(f"{r['flavor']:<7}{r['variant']:<16}{r['zero']:>5}{r['rows']:>6}{r['samples']:>8}{r['step_ms']:>10.1f}"
              f"{r['samples_s']:>11.1f}{r['tflops']:>9.1f}{r['mfu']:>7.1%}{r['mem_gib']:>9.1f}{speed:>9}", flush=True)


def run_flavor(flavor: str, args, device, peak: float, budget: Budget, out: dict) -> None:
    first_zero, other_zeros = args.zero[0], args.zero[1:]
    cfg = flavor_config(flavor, args)
    batch = pretraining_batch(cfg.vocab_size, args.rows, args.shape, device, args.dtype)
    flops = training_step_flops(cfg, group_shapes(batch, args.shape))
    print(f"\n== ofa_{flavor}: {samples_in(batch)} samples/step at {args.rows} rows; model FLOPs per step "
          + ", ".join(f"{k} {v / 1e12:.3f} T" for k, v in flops.items()), flush=True)
    out.setdefault("flops", {})[flavor] = {"rows": args.rows, **{k: v / 1e12 for k, v in flops.items()}}

    # 2. A/B of every variant at --rows, interleaved.
    runs, warm = {}, {}
    for name in args.variants:
        if budget.spent(f"ofa_{flavor} {name}", need(VARIANTS[name], args)):
            continue
        try:
            t = time.perf_counter()
            runs[name] = Run(flavor, VARIANTS[name], first_zero, args, device)
            for _ in range(args.warmup):
                timed_steps(runs[name], batch, 1, device)
            warm[name] = time.perf_counter() - t
            print(f"  built {name} (ZeRO-{first_zero}): ready in {warm[name]:.1f} s", flush=True)
        except Exception as err:
            report_error(f"ofa_{flavor}/{name}", err)
            runs.pop(name, None)
            free(device)
    times = {name: [] for name in runs}
    memory = {name: float("nan") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            if budget.left() < 5:
                break
            try:
                free(device)
                times[name] += timed_steps(run, batch, args.steps, device)
                memory[name] = peak_memory_gib(device)
            except Exception as err:
                report_error(f"ofa_{flavor}/{name} timing", err)
    ab = []
    for name, run in runs.items():
        if times[name]:
            r = row(run, args.rows, batch, times[name], flops, peak, device, warm[name])
            r["mem_gib"] = memory[name]
            ab.append(r)
    print_rows(ab, f"ofa_{flavor}, ZeRO-{first_zero}, {args.rows} rows: each variant alone "
                   f"({args.rounds} interleaved rounds x {args.steps} steps, median)")
    out["runs"] += ab

    # 3. profiler breakdown.
    for name in args.profile:
        if name in runs and not budget.spent(f"profile of {name}", 20):
            try:
                p = profile_breakdown(runs[name], batch, device, steps=args.profile_steps)
                out["profiles"].append(p)
                print(f"\nprofile ofa_{flavor} {name}: wall {p['wall_ms']:.1f} ms/step, device busy "
                      f"{p['busy_ms']:.1f} ms ({p['busy']:.0%})")
                for key, ms, count in p["top"]:
                    print(f"  {ms:9.2f} ms  x{count:<5} {key}")
            except Exception as err:
                report_error(f"profile {name}", err)
    keep = runs.pop(args.sweep_variant, None)
    for run in runs.values():
        run.close()
    runs.clear()
    free(device)

    # 4. micro-batch sweep.
    best_rows = args.rows
    if keep is not None:
        sweep = []
        for rows in args.sweep:
            if budget.spent(f"sweep at {rows} rows", args.need_per_variant / 2):
                break
            b = pretraining_batch(cfg.vocab_size, rows, args.shape, device, args.dtype)
            f = training_step_flops(cfg, group_shapes(b, args.shape))
            try:
                free(device)
                t = time.perf_counter()
                timed_steps(keep, b, args.warmup, device)
                sweep.append(row(keep, rows, b, timed_steps(keep, b, args.steps, device), f, peak, device,
                                 time.perf_counter() - t))
                best_rows = rows
            except Exception as err:
                if is_oom(err):
                    print(f"  {rows} rows: out of memory (the sweep stops here)", flush=True)
                    out["oom"].append({"flavor": flavor, "variant": keep.variant.name, "rows": rows})
                else:
                    report_error(f"sweep {rows} rows", err)
                break
            finally:
                del b
        print_rows(sweep, f"ofa_{flavor}, ZeRO-{first_zero}: micro-batch sweep of {keep.variant.name}")
        out["runs"] += sweep
        keep.close()
        del keep
        free(device)

    # 5. other ZeRO stages.
    for zero in other_zeros:
        rows_z = []
        for name, rows in (("today", args.rows), (args.sweep_variant, args.rows), (args.sweep_variant, best_rows)):
            if name not in VARIANTS or budget.spent(f"ZeRO-{zero} {name}", need(VARIANTS[name], args)):
                continue
            if rows_z and rows_z[-1]["variant"] == name and rows_z[-1]["rows"] == rows:
                continue
            run = None
            try:
                b = pretraining_batch(cfg.vocab_size, rows, args.shape, device, args.dtype)
                f = training_step_flops(cfg, group_shapes(b, args.shape))
                t = time.perf_counter()
                run = Run(flavor, VARIANTS[name], zero, args, device)
                timed_steps(run, b, args.warmup, device)
                free(device)
                rows_z.append(row(run, rows, b, timed_steps(run, b, args.steps * args.rounds, device), f, peak,
                                  device, time.perf_counter() - t))
            except Exception as err:
                report_error(f"ZeRO-{zero} {name} {rows} rows", err)
            finally:
                if run is not None:
                    run.close()
                free(device)
        print_rows(rows_z, f"ofa_{flavor}, ZeRO-{zero}")
        out["runs"] += rows_z


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ofa-ds bench train --engine deepspeed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--flavors", default="large,base")
    p.add_argument("--zero", default="1,2", help="ZeRO stages; the first gets the full A/B")
    p.add_argument("--precision", default=None, help="bf16 (default on CUDA) | fp32 (default on CPU)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--rows", type=int, default=8, help="VL rows per micro-batch for the A/B (a multiple of 8)")
    p.add_argument("--sweep", default="8,16,32,64,128,256", help="row counts of the micro-batch sweep")
    p.add_argument("--sweep-variant", default="best")
    p.add_argument("--profile", default="today,best", help="variants to profile (empty: none)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after building (compile, graphs)")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--extras-image-size", type=int, default=256)
    p.add_argument("--sample-patch-num", type=int, default=196, help="0: all patches")
    p.add_argument("--src-len", type=int, default=40)
    p.add_argument("--tgt-len", type=int, default=20)
    p.add_argument("--extras-tgt-len", type=int, default=257)
    p.add_argument("--time-budget", type=float, default=480.0, help="seconds for everything; later sections skip")
    p.add_argument("--need-per-variant", type=float, default=None,
                   help="seconds an eager variant needs to be started, x4 for compiled ones "
                        "(default: 30 on CUDA, 5 on CPU)")
    p.add_argument("--vocab-size", type=int, default=None, help="default: the flavor's (OFA's 59457)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile variants (aot_eager: a quick CPU check)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
    args.flavors = [f for f in args.flavors.split(",") if f]
    args.zero = [int(z) for z in args.zero.split(",") if z]
    args.variants = [v for v in args.variants.split(",") if v]
    args.profile = [v for v in args.profile.split(",") if v]
    args.sweep = [int(r) for r in args.sweep.split(",") if r]
    unknown = sorted(set(args.variants + args.profile + [args.sweep_variant]) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.precision != "fp32" and min(args.zero) < 1:
        p.error("bf16/fp16 need ZeRO >= 1 (fp32 master weights), as the trainer requires")
    if args.rows % 8 or any(r % 8 for r in args.sweep):
        p.error("row counts must be multiples of 8 (one extras set per 8 rows)")
    if args.sweep_variant not in args.variants:
        args.variants.append(args.sweep_variant)
    args.shape = Shape(args.image_size, args.extras_image_size, args.sample_patch_num or None,
                       args.src_len, args.tgt_len, args.extras_tgt_len)
    args.need_per_variant = args.need_per_variant or (30.0 if cuda else 5.0)
    return args


def main(argv=None) -> int:
    from ofa_ds.engine.distributed import init_distributed

    args = parse_args(argv)
    budget = Budget(args.time_budget)
    init_distributed()
    # Interleaved compiled variants share code objects; keep dynamo from falling back to eager.
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    device = args.device
    n = 8192 if device.type == "cuda" else 512
    peak = measure_matmul_peak(device, args.dtype, n=n)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "precision": args.precision, "peak_tflops": peak / 1e12,
           "shape": vars(args.shape), "variants": {v: vars(VARIANTS[v].options) | {"optimizer": VARIANTS[v].optimizer}
                                                    for v in args.variants}}
    print(f"device {env['device']}, torch {torch.__version__}, {args.precision}; measured {args.precision} matmul "
          f"peak ({n}^3) {peak / 1e12:.3g} TFLOP/s; budget {args.time_budget:.0f} s", flush=True)
    out = {"env": env, "runs": [], "profiles": [], "oom": []}
    for flavor in args.flavors:
        if budget.spent(f"ofa_{flavor}", args.need_per_variant):
            continue
        try:
            run_flavor(flavor, args, device, peak, budget, out)
        except Exception as err:
            report_error(f"ofa_{flavor}", err)
        free(device)
    print(f"\ntotal {time.time() - budget.start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0 if out["runs"] else 1
