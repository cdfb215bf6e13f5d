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

Batch unit: ``--micro-batch`` is ``train.micro_batch``, i.e. per-rank *vision-language rows*
for pretraining. Each row is 2 samples at ``--image-size`` (``--sample-patch-num`` patches if
set), and the micro-batch also runs the extras group (text/image infilling, detection: with
OFA's default weights 1 sample per 2 rows, images at 2 x ``--code-image-size``); both groups'
activations are alive until the backward (``micro_batch_groups``). For finetuning
(``--task caption``) it counts task samples.

Activations are what our code saves for backward, counted by a forward on the meta device
(exact for the shapes, dtype and tp = 1; scaled to tp by the analytic model below; no
recomputation unless ``--checkpoint-activations``). The analytic model: per transformer layer s*b*d*(12 + 32/tp) bytes for the
residual stream, LayerNorms and FFN (Korthikanti et al. 2022, plus OFA's attention and FFN
LayerNorms) and 6*H*s^2*b/tp for attention probabilities (fp32 softmax output + bf16
copy), plus the ResNet's conv outputs, the logits and the vocab-parallel loss. With
pipelining, stage s keeps up to (pp - s) micro-batches alive (1F1B schedule). Calibrate
against a real run before trusting the last GB.
"""
from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ofa_ds.config.flavors import flavor_names, get_flavor
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.resnet import ResNetBackbone
from ofa_ds.parallel.dims import ParallelDims, padded_vocab_size
from ofa_ds.parallel.groups import TPContext
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy

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


def _saved_bytes_per_piece(cfg: OFAConfig, samples: int, image_size: int, text_len: int, tgt_len: int,
                           sample_patch_num: int | None, dtype: torch.dtype) -> list[float]:
    """Bytes of the tensors (other than weights) autograd saves for backward in each pipeline piece, counted by
    running our model code on the meta device (tp = 1): exact for these shapes and dtype,
    whatever the layers do. The tied head's entry is the logits piece only."""
    from ofa_ds.parallel.pipeline import OFAPipelineSequential, pipeline_specs

    with torch.device("meta"):
        model = OFAPipelineSequential(pipeline_specs(cfg, None, sample_patch_num=sample_patch_num)).to(dtype).train()
        inputs = (torch.zeros(samples, text_len, dtype=torch.long), torch.zeros(samples, tgt_len, dtype=torch.long),
                  torch.zeros(samples, 3, image_size, image_size, dtype=dtype),
                  torch.ones(samples, dtype=torch.long), torch.zeros(samples, dtype=torch.long))
    counts = [0.0] * len(model._funcs)
    # Weights saved for backward are counted in the params term, not here.
    current, seen = [0], {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(t):
        key = t.untyped_storage()._cdata  # the storage itself (views share it); meta has no data_ptr
        if key not in seen:
            seen.add(key)
            counts[current[0]] += t.numel() * t.element_size()
        return t

    x = inputs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for i, func in enumerate(model._funcs):
            current[0] = i
            x = func(x)
        with torch.device("meta"):  # the loss, counted with the head
            target, conf = torch.full((samples, tgt_len), 4, dtype=torch.long), torch.ones(samples)
        from torch.fx.experimental import _config as fx_config

        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):  # no padding: every token counts
            label_smoothed_cross_entropy(x, target, conf, options=LossOptions(label_smoothing=0.1))
    return counts


_SAVED: dict[tuple, tuple[float, ...]] = {}


def _measured(cfg: OFAConfig, *shape) -> tuple[float, ...]:
    key = (repr(sorted(cfg.to_dict().items())), *shape)
    if key not in _SAVED:
        _SAVED[key] = tuple(_saved_bytes_per_piece(cfg, *shape))
    return _SAVED[key]


def piece_activation_bytes(cfg: OFAConfig, tp: int, micro_batch: float, image_size: int, text_len: int,
                           tgt_len: int, checkpoint: bool, patches: int | None = None,
                           dtype: torch.dtype = torch.bfloat16) -> list[float]:
    """Activation bytes kept for backward by ``micro_batch`` samples, per pipeline piece:
    what our code saves (a meta-device forward at tp = 1, ``_saved_bytes_per_piece``), scaled
    to ``tp`` by the analytic model below; with ``checkpoint``, each layer keeps its input and
    one layer at a time is recomputed. The head's entry includes the loss."""
    all_patches = (image_size // ResNetBackbone.stride) ** 2
    n = max(1, math.ceil(micro_batch))
    sampled = patches if patches is not None and patches < all_patches else None
    measured = [c * micro_batch / n for c in _measured(cfg, n, image_size, text_len, tgt_len, sampled, dtype)]
    analytic = _analytic_piece_bytes(cfg, tp, micro_batch, image_size, text_len, tgt_len, False, patches)
    analytic_1 = _analytic_piece_bytes(cfg, 1, micro_batch, image_size, text_len, tgt_len, False, patches)
    scaled = [m * (a / a1 if a1 else 1.0) for m, a, a1 in zip(measured, analytic, analytic_1)]
    elt = torch.finfo(dtype).bits // 8
    if checkpoint:
        E, D = cfg.encoder_layers, cfg.decoder_layers
        L = (patches if patches is not None else all_patches) + text_len
        layers = list(range(2, 2 + E)) + list(range(3 + E, 3 + E + D))
        recompute = max(scaled[i] for i in layers)
        for i in layers:
            scaled[i] = elt * micro_batch * cfg.embed_dim * (L if i < 2 + E else tgt_len)
        scaled[2] += recompute
    return scaled


def _analytic_piece_bytes(cfg: OFAConfig, tp: int, micro_batch: float, image_size: int, text_len: int,
                          tgt_len: int, checkpoint: bool, patches: int | None = None) -> list[float]:
    """Analytic activation bytes (bf16) per pipeline piece; used for the TP scaling."""
    b, d, F_, H = micro_batch, cfg.embed_dim, cfg.ffn_dim, cfg.encoder_heads
    N = (image_size // ResNetBackbone.stride) ** 2 if patches is None else patches
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


@dataclass(frozen=True)
class Group:
    """One forward group of a micro-batch: ``samples`` at ``image_size`` px with ``patches``
    image positions in the encoder (every sample carries an image slot, text-only samples a
    blank one)."""
    samples: float
    image_size: int
    patches: int
    text_len: int
    tgt_len: int


def micro_batch_groups(micro_batch: int, *, image_size: int, text_len: int = 64, tgt_len: int = 64,
                       task: str = "pretrain", code_image_size: int = 128, sample_patch_num: int | None = None,
                       weights: dict | None = None, extras_lengths: tuple[int, int] | None = None) -> list[Group]:
    """The groups one per-rank micro-batch runs, in ``train.micro_batch``'s unit.
    ``extras_lengths``: (source, target) tokens of the extras group (default: the VL ones)."""
    from ofa_ds.data.mixture import DEFAULT_WEIGHTS, SAMPLES_PER_VL_ROW, VL

    all_patches = (image_size // ResNetBackbone.stride) ** 2
    if task != "pretrain":
        return [Group(float(micro_batch), image_size, all_patches, text_len, tgt_len)]
    w = dict(weights or DEFAULT_WEIGHTS)
    vl = SAMPLES_PER_VL_ROW * micro_batch
    extras = vl * sum(v for k, v in w.items() if k != VL) / w[VL]  # exact share; memory is linear in it
    groups = [Group(float(vl), image_size, min(sample_patch_num or all_patches, all_patches), text_len, tgt_len)]
    if extras:
        side = 2 * code_image_size
        groups.append(Group(extras, side, (side // ResNetBackbone.stride) ** 2, *(extras_lengths or (text_len, tgt_len))))
    return groups


def estimate(cfg: OFAConfig, dims: ParallelDims, *, micro_batch: int, image_size: int, text_len: int = 64,
             tgt_len: int = 64, checkpoint_activations: bool = False, task: str = "pretrain",
             code_image_size: int = 128, sample_patch_num: int | None = None, weights: dict | None = None,
             extras_lengths: tuple[int, int] | None = None) -> Estimate:
    """Memory on the busiest GPU of a validated layout; ``micro_batch`` as ``train.micro_batch``."""
    from ofa_ds.parallel.pipeline import partition_by_cost, piece_costs

    if dims.tp > 1 and cfg.vocab_size % dims.tp:
        cfg = cfg.replace(vocab_size=padded_vocab_size(cfg.vocab_size, dims.tp))
    costs = piece_costs(cfg, image_size=image_size, text_len=text_len, tgt_len=tgt_len)
    groups = micro_batch_groups(micro_batch, image_size=image_size, text_len=text_len, tgt_len=tgt_len, task=task,
                                code_image_size=code_image_size, sample_patch_num=sample_patch_num, weights=weights,
                                extras_lengths=extras_lengths)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dims.precision]
    per_group = [piece_activation_bytes(cfg, dims.tp, g.samples, g.image_size, g.text_len, g.tgt_len,
                                        checkpoint_activations, patches=g.patches, dtype=dtype) for g in groups]
    params = stage_params(cfg, dims.tp, dims.pp, costs)
    parts = partition_by_cost(costs, dims.pp) if dims.pp > 1 else [0, len(costs)]
    if dims.pp == 1:  # both groups' activations live until the one backward of the micro-batch
        stage_acts = [sum(sum(acts) for acts in per_group)]
    else:  # each group is one pipeline micro-batch; stage s holds up to pp - s of them (1F1B)
        stage_acts = [(dims.pp - s) * max(sum(acts[a:b]) for acts in per_group)
                      for s, (a, b) in enumerate(zip(parts, parts[1:]))]
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
                for offload in (False, True):  # validate() keeps what the config accepts
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


def plan(cfg: OFAConfig, gpus: int, gpu_mem_gb: float, *, micro_batch: int = 8, image_size: int = 480,
         gpus_per_node: int = 8, precision: str = "bf16", text_len: int = 64, tgt_len: int = 64,
         checkpoint_activations: bool = False, **batch) -> list[Estimate]:
    """Estimates of every valid layout, the recommended one first. ``batch``: the group
    options of ``estimate`` (task, code_image_size, sample_patch_num, weights)."""
    estimates = [estimate(cfg, dims, micro_batch=micro_batch, image_size=image_size, text_len=text_len,
                          tgt_len=tgt_len, checkpoint_activations=checkpoint_activations, **batch)
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
    p.add_argument("--micro-batch", type=int, default=8,
                   help="per-rank micro-batch as train.micro_batch: VL rows for pretraining (2 samples each, "
                        "plus the extras group), task samples for --task caption")
    p.add_argument("--task", default="pretrain", choices=("pretrain", "caption"))
    p.add_argument("--image-size", type=int, default=480)
    p.add_argument("--code-image-size", type=int, default=128, help="data.code_image_size (extras images: 2x)")
    p.add_argument("--sample-patch-num", type=int, default=None, help="data.sample_patch_num (default: all)")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--tgt-len", type=int, default=64)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--checkpoint-activations", action="store_true")
    args = p.parse_args(argv)
    cfg = get_flavor(args.flavor)
    estimates = plan(cfg, args.gpus, args.gpu_mem, micro_batch=args.micro_batch, image_size=args.image_size,
                     gpus_per_node=args.gpus_per_node, precision=args.precision, text_len=args.text_len,
                     tgt_len=args.tgt_len, checkpoint_activations=args.checkpoint_activations, task=args.task,
                     code_image_size=args.code_image_size, sample_patch_num=args.sample_patch_num)
    if not estimates:
        print(f"no valid layout for {args.gpus} GPUs", flush=True)
        return 1
    n_params = sum(piece_param_counts(cfg, 1)[:-1])
    unit = "VL rows" if args.task == "pretrain" else "samples"
    print(f"OFA-{args.flavor}: {n_params / 1e6:.0f} M parameters, micro-batch {args.micro_batch} {unit}, "
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
