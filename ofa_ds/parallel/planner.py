"""``ofa-ds plan``: per-GPU memory of every valid parallel layout, and a recommendation.

    ofa-ds plan --flavor huge --gpus 8 --gpu-mem 80 [--micro-batch 4 --image-size 480]

Model states are counted exactly: the pipeline pieces are built on the meta device, the TP
plan is applied to them, and the stages are the cost split ``build_pipeline_module`` uses.
Bytes per parameter (DeepSpeed, Adam):

=========  =========  ==========  ==================================================
precision  weights    gradients   optimizer (Adam m, v; fp32 master copy if not fp32)
=========  =========  ==========  ==================================================
fp32       4          4           8
bf16       2          4 (*)       12
fp16       2          2           12
=========  =========  ==========  ==================================================

(*) fp32 gradient accumulation (``"data_types": {"grad_accum_dtype": "fp32"}``, which the
recipes set). ZeRO-1 divides the optimizer states by DP, ZeRO-2 also the gradients,
ZeRO-3 also the weights; offload moves the optimizer states (and at ZeRO-3 the weights)
to CPU memory.

Activations are an *estimate* (bf16, per micro-batch, no recomputation unless
``--checkpoint-activations``): per transformer layer s*b*d*(12 + 32/tp) bytes for the
residual stream, LayerNorms and FFN (Korthikanti et al. 2022, plus OFA's attention and FFN
LayerNorms) and 6*H*s^2*b/tp for attention probabilities (fp32 softmax output + bf16
copy), plus the ResNet's conv outputs, the logits and the vocab-parallel loss. With
pipelining, stage s keeps up to (pp - s) micro-batches alive (1F1B schedule). Calibrate
against a real run before trusting the last GB.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from ofa_ds.config.flavors import flavor_names, get_flavor
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.resnet import ResNetBackbone
from ofa_ds.parallel.dims import ParallelDims, padded_vocab_size
from ofa_ds.parallel.groups import TPContext

GB = 1024**3
# weights, gradients, optimizer bytes per parameter
BYTES_PER_PARAM = {"fp32": (4, 4, 8), "bf16": (2, 4, 12), "fp16": (2, 2, 12)}
OVERHEAD_GB = 2.5  # CUDA context, NCCL buffers, allocator fragmentation
USABLE = 0.92  # keep this fraction of the card for the estimate


@dataclass
class Estimate:
    dims: ParallelDims
    params: float  # bytes on the busiest GPU
    grads: float
    optimizer: float
    activations: float
    cpu_offloaded: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + OVERHEAD_GB * GB

    def fits(self, gpu_mem_gb: float) -> bool:
        return self.total <= USABLE * gpu_mem_gb * GB


_COUNTS: dict[tuple[str, int], tuple[int, ...]] = {}


def piece_param_counts(cfg: OFAConfig, tp: int) -> tuple[int, ...]:
    """Local (this TP rank's) parameters of every pipeline piece, built on meta."""
    from ofa_ds.parallel.pipeline import pipeline_specs

    key = (repr(sorted(cfg.to_dict().items())), tp)
    if key not in _COUNTS:
        ctx = TPContext(None, 0, tp) if tp > 1 else None
        counts = []
        with torch.device("meta"):
            for spec in pipeline_specs(cfg, ctx):
                counts.append(sum(p.numel() for p in spec.build().parameters()))
        _COUNTS[key] = tuple(counts)
    return _COUNTS[key]


def stage_params(cfg: OFAConfig, tp: int, pp: int, costs: list[float]) -> list[int]:
    """Parameters held per pipeline stage (the tied embedding on the first and last)."""
    from ofa_ds.parallel.pipeline import partition_by_cost

    counts = piece_param_counts(cfg, tp)
    if pp == 1:
        return [sum(counts[:-1])]  # the head is the tied embedding again
    parts = partition_by_cost(costs, pp)
    return [sum(counts[a:b]) for a, b in zip(parts, parts[1:])]


@functools.lru_cache(maxsize=8)
def _resnet_activation_bytes(blocks: tuple, image_size: int) -> float:
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output.numel()

    with torch.device("meta"):
        net = ResNetBackbone(blocks).eval()
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.register_forward_hook(count)
        net(torch.empty(1, 3, image_size, image_size))
    return 2.0 * 1.5 * total  # bf16; conv outputs saved by BN, BN outputs by ReLU/next conv


def piece_activation_bytes(cfg: OFAConfig, tp: int, micro_batch: int, image_size: int, text_len: int,
                           tgt_len: int, checkpoint: bool) -> list[float]:
    """Activation bytes of one micro-batch kept for backward, per pipeline piece."""
    b, d, F_, H = micro_batch, cfg.embed_dim, cfg.ffn_dim, cfg.encoder_heads
    N = (image_size // ResNetBackbone.stride) ** 2
    L, T = N + text_len, tgt_len
    V = padded_vocab_size(cfg.vocab_size, tp) if tp > 1 else cfg.vocab_size
    del F_  # folded into the per-layer coefficients (F = 4d in every OFA size)
    if checkpoint:
        enc_layer, dec_layer = 2.0 * L * b * d, 2.0 * T * b * d  # only the layer input survives
    else:
        enc_layer = L * b * d * (12 + 32 / tp) + 6 * H * L * L * b / tp
        dec_layer = T * b * d * (18 + 40 / tp) + 6 * H * (T * T + T * L) * b / tp + 4 * L * b * d / tp
    enc_embed = b * (_resnet_activation_bytes(tuple(cfg.resnet_layers), image_size) + 2 * L * d * 6) + 2 * H * L * L * b / tp
    dec_embed = 2 * T * b * d * 6 + 2 * H * (T * T + T * L) * b / tp
    head = 10.0 * T * b * V / tp  # bf16 logits, fp32 copy, softmax kept by the loss
    return ([0.0, enc_embed] + [enc_layer] * cfg.encoder_layers + [dec_embed]
            + [dec_layer] * cfg.decoder_layers + [head])


def estimate(cfg: OFAConfig, dims: ParallelDims, *, micro_batch: int, image_size: int, text_len: int = 64,
             tgt_len: int = 64, checkpoint_activations: bool = False) -> Estimate:
    """Memory on the busiest GPU of a validated layout."""
    from ofa_ds.parallel.pipeline import partition_by_cost, piece_costs

    if dims.tp > 1 and cfg.vocab_size % dims.tp:
        cfg = cfg.replace(vocab_size=padded_vocab_size(cfg.vocab_size, dims.tp))
    costs = piece_costs(cfg, image_size=image_size, text_len=text_len, tgt_len=tgt_len)
    acts = piece_activation_bytes(cfg, dims.tp, micro_batch, image_size, text_len, tgt_len,
                                  checkpoint_activations)
    params = stage_params(cfg, dims.tp, dims.pp, costs)
    parts = partition_by_cost(costs, dims.pp) if dims.pp > 1 else [0, len(costs)]
    stage_acts = [(dims.pp - s) * sum(acts[a:b]) for s, (a, b) in enumerate(zip(parts, parts[1:]))]
    w, g, o = BYTES_PER_PARAM[dims.precision]
    best = None
    for n_params, n_acts in zip(params, stage_acts):
        dp, z = dims.dp, dims.zero_stage
        weights = n_params * w / (dp if z == 3 else 1)
        grads = n_params * g / (dp if z >= 2 else 1)
        optim = n_params * o / (dp if z >= 1 else 1)
        offloaded = 0.0
        if dims.offload:
            offloaded += optim
            optim = 0.0
            if z == 3:
                offloaded += weights
                weights = 2 * max(piece_param_counts(cfg, dims.tp)[2:-1]) * w  # layers in flight
        e = Estimate(dims, weights, grads, optim, n_acts, offloaded)
        if best is None or e.total > best.total:
            best = e
    return best


def candidate_layouts(cfg: OFAConfig, gpus: int, gpus_per_node: int, precision: str) -> list[ParallelDims]:
    out = []
    for tp in (1, 2, 4, 8):
        if tp > gpus_per_node or gpus % tp:
            continue
        for pp in range(1, gpus // tp + 1):
            if (gpus // tp) % pp:
                continue
            stages = (1, 2, 3) if pp == 1 else (1,)
            for zero in stages:
                for offload in ((False, True) if pp == 1 else (False,)):
                    dims = ParallelDims(dp=-1, tp=tp, pp=pp, zero_stage=zero, offload=offload,
                                        precision=precision, device="cuda")
                    model = cfg
                    if tp > 1 and cfg.vocab_size % tp:
                        model = cfg.replace(vocab_size=padded_vocab_size(cfg.vocab_size, tp))
                    try:
                        dims.validate(gpus, model)
                    except ValueError:
                        continue
                    out.append(dims)
    return out


def _preference(e: Estimate, gpu_mem_gb: float):
    """Fits first; then the least model parallelism (TP/PP cost bandwidth and bubbles),
    no offload (PCIe-bound), lower ZeRO stage (less communication), more headroom."""
    d = e.dims
    return (not e.fits(gpu_mem_gb), d.tp * d.pp, d.pp, d.offload, d.zero_stage, e.total)


def plan(cfg: OFAConfig, gpus: int, gpu_mem_gb: float, *, micro_batch: int = 4, image_size: int = 480,
         gpus_per_node: int = 8, precision: str = "bf16", text_len: int = 64, tgt_len: int = 64,
         checkpoint_activations: bool = False) -> list[Estimate]:
    """Estimates of every valid layout, the recommended one first."""
    estimates = [estimate(cfg, dims, micro_batch=micro_batch, image_size=image_size, text_len=text_len,
                          tgt_len=tgt_len, checkpoint_activations=checkpoint_activations)
                 for dims in candidate_layouts(cfg, gpus, gpus_per_node, precision)]
    return sorted(estimates, key=lambda e: _preference(e, gpu_mem_gb))


def format_plan(estimates: list[Estimate], gpu_mem_gb: float) -> str:
    head = f"{'layout':34s} {'params':>7s} {'grads':>7s} {'optim':>7s} {'activ':>7s} {'total':>7s}  fits  (GB/GPU)"
    lines = [head, "-" * len(head)]
    for e in estimates:
        cells = [e.params, e.grads, e.optimizer, e.activations, e.total]
        off = f"  +{e.cpu_offloaded / GB:.1f} GB on CPU" if e.cpu_offloaded else ""
        lines.append(f"{str(e.dims):34s} " + " ".join(f"{c / GB:7.1f}" for c in cells)
                     + f"  {'yes' if e.fits(gpu_mem_gb) else 'no ':4s}{off}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ofa-ds plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--flavor", default="huge", choices=flavor_names())
    p.add_argument("--gpus", type=int, required=True, help="total GPUs (all nodes)")
    p.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU in GB")
    p.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--image-size", type=int, default=480)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--tgt-len", type=int, default=64)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--checkpoint-activations", action="store_true")
    args = p.parse_args(argv)
    cfg = get_flavor(args.flavor)
    estimates = plan(cfg, args.gpus, args.gpu_mem, micro_batch=args.micro_batch, image_size=args.image_size,
                     gpus_per_node=args.gpus_per_node, precision=args.precision, text_len=args.text_len,
                     tgt_len=args.tgt_len, checkpoint_activations=args.checkpoint_activations)
    if not estimates:
        print(f"no valid layout for {args.gpus} GPUs", flush=True)
        return 1
    n_params = sum(piece_param_counts(cfg, 1)[:-1])
    print(f"OFA-{args.flavor}: {n_params / 1e6:.0f} M parameters, micro-batch {args.micro_batch}, "
          f"{args.image_size} px ({(args.image_size // 16) ** 2} patches), {args.precision}, "
          f"{args.gpus} x {args.gpu_mem:g} GB\n")
    print(format_plan(estimates, args.gpu_mem))
    best = estimates[0]
    if best.fits(args.gpu_mem):
        d = best.dims
        print(f"\nrecommended: {d}  ({best.total / GB:.1f} of {args.gpu_mem:g} GB)")
        print(f"  ParallelDims(dp={d.dp}, tp={d.tp}, pp={d.pp}, zero_stage={d.zero_stage}, offload={d.offload})")
        if d.tp > 1 and cfg.vocab_size % d.tp:
            print(f"  pad the vocabulary to {padded_vocab_size(cfg.vocab_size, d.tp)} (valid_vocab_size="
                  f"{cfg.vocab_size} in the loss)")
    else:
        print("\nnothing fits: lower --micro-batch, add --checkpoint-activations, or add GPUs")
    return 0
