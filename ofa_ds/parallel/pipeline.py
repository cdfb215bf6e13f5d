"""OFA as a DeepSpeed ``PipelineModule``: one ``LayerSpec`` list, a cost-balanced split,
and a sequential twin for tests.

Pieces (in order; each mirrors the single-device model's parameter names, so state dicts,
the TP plan and checkpoints use the ``OFAModel`` FQNs unchanged)::

    0  TiedLayerSpec("embed_tokens", TokenEmbeddingPipe)   encoder.embed_tokens  (own forward)
    1  EncoderEmbedPipe     ResNet, image_proj, type/position embeddings, abs position bias
    2+ EncoderLayerPipe(i)  encoder.layers.i + its relative-position tables (+ final LN if last)
       DecoderEmbedPipe     decoder embedding LNs, positions, self/cross abs position biases
       DecoderLayerPipe(j)  decoder.layers.j + its relative tables (+ final LN if last)
    -1 TiedLayerSpec("embed_tokens", ..., forward_fn=lm_head)   logits = h @ E^T

The activation contract (what travels between pieces; every entry is a tensor, stage
boundaries may fall between any two pieces except 0|1)::

    input   (src_tokens L[B,S], prev_output_tokens L[B,T], patch_images F[B,3,H,W],
             patch_masks [B], code_masks [B])                       see pipeline_batch()
    0 ->    (src_emb F[B,S,d], tgt_emb F[B,T,d], patch_images, src_tokens, prev_tokens,
             patch_masks L[B], code_masks L[B])
    1 ->    (x F[B,L,d], abs_bias F[B,H,L,L], enc_pos F[B,L,d], tgt_emb, enc_pad L[B,L],
             image_buckets L[B,N,N], text_buckets L[S,S], prev_tokens, code_masks)
    enc i   same tuple, x updated; the last encoder piece applies the final LN and emits
            (enc_out F[B,L,d], enc_pos, tgt_emb, enc_pad, prev_tokens, code_masks)
    dec emb (y F[B,T,d], enc_out, self_abs F[B,H,T,T], cross_abs F[B,H,T,L], enc_pad,
             self_pad L[B,T], dec_text_buckets L[T,T], dec_code_buckets L[T,T], code_masks)
    dec j   same tuple, y updated; the last decoder piece applies the final LN and emits y
    head    logits F[B,T,V/tp]  -> loss_fn(logits, labels), labels = (target, conf[, constraint_masks])

F = floating, L = int64. Rules behind it (DeepSpeed's pipe engine, spec parallelism.md §2.3):

* Every floating tensor a stage receives gets ``requires_grad`` and must receive a
  gradient, so a float is only carried while a later piece uses it (``abs_bias`` stops at
  the last encoder layer, ``enc_pos`` and ``tgt_emb`` at the decoder embedding). Carrying
  a float *through* a stage is fine (its gradient flows back unchanged).
* Every floating tensor a stage sends must require grad. ``patch_images`` (a data input)
  does not, so the split never separates pieces 0 and 1.
* Masks, ids and bucket indices are int64 (no gradient; no bool on NCCL).
* H is the local head count (H/tp); encoder output, biases and masks are what *every*
  decoder layer needs, hence carried to the end of the decoder.
* Shapes change with text length, image size and batch: the module is built with
  ``dynamic_shape=True`` unless ``fixed_shapes=True`` is requested, in which case the
  first piece refuses a batch whose shapes differ from the first one instead of letting
  the receiving stage read garbage (gloo: size error; NCCL: hang).
* The tied embedding's first occurrence runs the module's own ``forward``: DeepSpeed
  saves a tied module only where it is not wrapped in a ``forward_fn`` partial.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepspeed.runtime.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime import utils as ds_utils

from ofa_ds import kernels
from ofa_ds.model.config import OFAConfig
from ofa_ds.model.decoder import OFADecoder, _per_sample
from ofa_ds.model.encoder import OFAEncoder, add_relative_bias
from ofa_ds.model.init import init_ofa_weights
from ofa_ds.model.layers import DecoderLayer, EncoderLayer, drop_path_rates, layer_norm
from ofa_ds.model.resnet import ResNetBackbone
from ofa_ds.parallel.dims import ParallelDims
from ofa_ds.parallel.groups import ParallelGroups, TPContext
from ofa_ds.parallel.mappings import copy_to_tp
from ofa_ds.parallel.plan import apply_tensor_parallel, shard_state_dict
from ofa_ds.tasks.criterion import LossOptions, label_smoothed_cross_entropy

logger = logging.getLogger(__name__)

TIED_KEY = "embed_tokens"
TIED_ATTR = "encoder.embed_tokens.weight"


def _sendable(*tensors) -> tuple:
    """Stage boundaries send with torch.distributed, which needs contiguous tensors
    (bucket slices and expanded position tables are views)."""
    return tuple(t.contiguous() for t in tensors)


class _Piece(nn.Module):
    """A pipeline layer holding submodules under single-device FQNs."""

    ofa_pipeline_piece = True

    def _put(self, fqn: str, module: nn.Module) -> None:
        parent = self
        *path, leaf = fqn.split(".")
        for name in path:
            if name not in parent._modules:
                parent.add_module(name, nn.Module())
            parent = parent._modules[name]
        parent.add_module(leaf, module)

    def _put_layer(self, cfg: OFAConfig, stack: str, index: int, layer: nn.Module, heads: int, last: bool) -> None:
        """Layer ``index`` of ``stack`` with its own relative-position tables, plus the
        stack's final LayerNorm on the last piece (single-device names throughout)."""
        self._put(f"{stack}.layers.{index}", layer)
        self._put(f"{stack}.token_rel_pos_table_list.{index}", nn.Embedding(cfg.num_token_rel_buckets, heads))
        self._put(f"{stack}.image_rel_pos_table_list.{index}", nn.Embedding(cfg.num_image_rel_buckets, heads))
        if last and cfg.normalize_before:
            self._put(f"{stack}.layer_norm", layer_norm(cfg.embed_dim))

    def _finish(self, tp: TPContext | None) -> None:
        init_ofa_weights(self)
        if tp is not None:
            apply_tensor_parallel(self, tp)


class TokenEmbeddingPipe(_Piece):
    """The shared token table (tied with the head). ``fixed_shapes``: refuse shape changes."""

    def __init__(self, cfg: OFAConfig, tp: TPContext | None = None, fixed_shapes: bool = False):
        super().__init__()
        self._put("encoder.embed_tokens", nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad))
        self._finish(tp)
        self.fixed_shapes, self._shapes = fixed_shapes, None

    def forward(self, inputs):
        src_tokens, prev_tokens, patch_images, patch_masks, code_masks = inputs
        if self.fixed_shapes:
            shapes = [tuple(t.shape) for t in inputs]
            if self._shapes is None:
                self._shapes = shapes
            elif shapes != self._shapes:
                raise ValueError(
                    f"pipeline input shapes changed from {self._shapes} to {shapes} but the module was built "
                    f"with fixed_shapes=True (DeepSpeed dynamic_shape=False caches the first shapes; the next "
                    f"stage would misread the activations). Build with fixed_shapes=False, or bucket batches "
                    f"to one shape")
        embed = self.encoder.embed_tokens
        return _sendable(embed(src_tokens), embed(prev_tokens), patch_images, src_tokens, prev_tokens,
                         patch_masks.long(), code_masks.long())


def lm_head(module: TokenEmbeddingPipe, hidden_BTd):
    """The tied output projection, logits for this rank's vocab slice [B, T, V/tp]."""
    embed = module.encoder.embed_tokens
    tp = getattr(embed, "tp", None)
    x = hidden_BTd if tp is None else copy_to_tp(hidden_BTd, tp)
    return F.linear(x, embed.weight)


class EncoderEmbedPipe(_Piece):
    def __init__(self, cfg: OFAConfig, tp: TPContext | None = None, sample_patch_num: int | None = None):
        super().__init__()
        shell = OFAEncoder(cfg.replace(encoder_layers=0), embed_tokens=nn.Identity())
        shell.layer_norm = None  # lives in the last encoder layer piece
        self._put("encoder", shell)
        self.sample_patch_num = sample_patch_num
        self._finish(tp)

    def forward(self, inputs):
        src_emb, tgt_emb, patch_images, src_tokens, prev_tokens, patch_masks, code_masks = inputs
        enc = self.encoder
        S = src_tokens.shape[1]
        e = enc.embed(src_tokens, patch_images, patch_masks.bool(), self.sample_patch_num, token_embeddings=src_emb)
        return _sendable(e["x"], e["abs_bias"], e["positions"], tgt_emb, e["padding"].long(), e["image_buckets"],
                         enc.token_rp_bucket[:S, :S], prev_tokens, code_masks)


class EncoderLayerPipe(_Piece):
    def __init__(self, cfg: OFAConfig, index: int, tp: TPContext | None = None, last: bool = False):
        super().__init__()
        self.index, self.last = index, last
        rate = drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)[index]
        self._put_layer(cfg, "encoder", index, EncoderLayer(cfg, rate), cfg.encoder_heads, last)
        self._finish(tp)

    def forward(self, inputs):
        x, abs_bias, enc_pos, tgt_emb, enc_pad, image_buckets, text_buckets, prev_tokens, code_masks = inputs
        i, enc = str(self.index), self.encoder
        text_table, image_table = getattr(enc.token_rel_pos_table_list, i), getattr(enc.image_rel_pos_table_list, i)
        bias = add_relative_bias(abs_bias, kernels.relative_bias(text_table, text_buckets),
                                 kernels.relative_bias(image_table, image_buckets))
        x = getattr(enc.layers, i)(x, enc_pad.bool(), bias)
        if not self.last:
            return (x, abs_bias, enc_pos, tgt_emb, enc_pad, image_buckets, text_buckets, prev_tokens, code_masks)
        if "layer_norm" in enc._modules:
            x = enc.layer_norm(x)
        return _sendable(x, enc_pos, tgt_emb, enc_pad, prev_tokens, code_masks)


class DecoderEmbedPipe(_Piece):
    def __init__(self, cfg: OFAConfig, tp: TPContext | None = None):
        super().__init__()
        # A zero-layer decoder over a 1-row stand-in vocabulary: keeps the model's own
        # position/embedding code; the real table lives in the tied piece.
        shell = OFADecoder(cfg.replace(decoder_layers=0, vocab_size=1), nn.Embedding(1, cfg.embed_dim))
        shell.embed_tokens = None  # tokens arrive embedded (tgt_emb); the table is the tied piece
        shell.output_projection = None
        shell.layer_norm = None
        self._put("decoder", shell)
        self.pad = cfg.pad
        self._finish(tp)

    def forward(self, inputs):
        enc_out, enc_pos, tgt_emb, enc_pad, prev_tokens, code_masks = inputs
        dec = self.decoder
        T = prev_tokens.shape[1]
        y, self_abs, cross_abs = dec.prepare(prev_tokens, enc_pos, code_masks.bool(), token_embeddings=tgt_emb)
        idx = dec.image_position_idx[:T]
        return _sendable(y, enc_out, self_abs, cross_abs, enc_pad, prev_tokens.eq(self.pad).long(),
                         dec.token_rp_bucket[:T, :T], dec.image_rp_bucket[idx][:, idx], code_masks)


class DecoderLayerPipe(_Piece):
    def __init__(self, cfg: OFAConfig, index: int, tp: TPContext | None = None, last: bool = False):
        super().__init__()
        self.index, self.last = index, last
        rate = drop_path_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)[index]
        self._put_layer(cfg, "decoder", index, DecoderLayer(cfg, rate), cfg.decoder_heads, last)
        self._finish(tp)

    def forward(self, inputs):
        y, enc_out, self_abs, cross_abs, enc_pad, self_pad, text_buckets, code_buckets, code_masks = inputs
        j, dec = str(self.index), self.decoder
        text = kernels.relative_bias(getattr(dec.token_rel_pos_table_list, j), text_buckets).permute(2, 0, 1)[None]
        code = kernels.relative_bias(getattr(dec.image_rel_pos_table_list, j), code_buckets).permute(2, 0, 1)[None]
        self_bias = self_abs + _per_sample(code_masks.bool(), text, code)
        y = getattr(dec.layers, j)(y, enc_out, enc_pad.bool(), self_pad.bool(), self_bias, cross_abs)
        if not self.last:
            return (y, enc_out, self_abs, cross_abs, enc_pad, self_pad, text_buckets, code_buckets, code_masks)
        return (dec.layer_norm(y) if "layer_norm" in dec._modules else y).contiguous()


# -- specs, costs, partition -------------------------------------------------------------------
def pipeline_specs(cfg: OFAConfig, tp: TPContext | None = None, *, sample_patch_num: int | None = None,
                   fixed_shapes: bool = False) -> list:
    E, D = cfg.encoder_layers, cfg.decoder_layers
    specs = [TiedLayerSpec(TIED_KEY, TokenEmbeddingPipe, cfg, tp, fixed_shapes, tied_weight_attr=TIED_ATTR),
             LayerSpec(EncoderEmbedPipe, cfg, tp, sample_patch_num)]
    specs += [LayerSpec(EncoderLayerPipe, cfg, i, tp, i == E - 1) for i in range(E)]
    specs += [LayerSpec(DecoderEmbedPipe, cfg, tp)]
    specs += [LayerSpec(DecoderLayerPipe, cfg, j, tp, j == D - 1) for j in range(D)]
    specs += [TiedLayerSpec(TIED_KEY, TokenEmbeddingPipe, cfg, tp, fixed_shapes, forward_fn=lm_head,
                            tied_weight_attr=TIED_ATTR)]
    check_tied_specs(specs)
    return specs


def check_tied_specs(specs: list) -> None:
    """The first occurrence of every tied key must use the module's own forward: DeepSpeed
    writes no checkpoint file for an occurrence wrapped in ``forward_fn``, so a key used
    only through ``forward_fn`` is never saved and silently not restored."""
    seen = set()
    for i, spec in enumerate(specs):
        if isinstance(spec, TiedLayerSpec) and spec.key not in seen:
            seen.add(spec.key)
            if spec.forward_fn is not None:
                raise ValueError(f"tied key {spec.key!r}: its first occurrence (layer {i}) uses forward_fn, so "
                                 f"DeepSpeed would never save the tied weight; let it run the module's forward")


@functools.lru_cache(maxsize=8)
def _resnet_flops(blocks: tuple, image_size: int) -> float:
    """Multiply-adds x2 of the ResNet stem at one image (meta-device shape inference)."""
    flops = 0.0

    def count(module, inputs, output):
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1]
        flops += 2.0 * output.numel() * k * module.in_channels / module.groups

    with torch.device("meta"):
        net = ResNetBackbone(blocks).eval()  # eval: BN on meta is much cheaper without batch stats
        hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
        net(torch.empty(1, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    return flops


def piece_costs(cfg: OFAConfig, *, image_size: int = 480, text_len: int = 64, tgt_len: int = 64) -> list[float]:
    """Forward FLOPs per sample of every piece, in spec order (matmuls only; backward is
    ~2x forward everywhere, so the ratios hold for training)."""
    d, F_, V = cfg.embed_dim, cfg.ffn_dim, cfg.vocab_size
    N = (image_size // ResNetBackbone.stride) ** 2
    L, T = N + text_len, tgt_len
    token = 2.0 * (text_len + T) * d  # lookups, negligible
    enc_embed = _resnet_flops(cfg.resnet_layers, image_size) + 2 * N * ResNetBackbone.out_channels * d \
        + 4 * L * d * d + 2 * L * L * d
    enc_layer = L * (8 * d * d + 4 * d * F_ + 4 * L * d)
    dec_embed = 8 * T * d * d + 4 * L * d * d + 2 * T * T * d + 2 * T * L * d
    dec_layer = T * (8 * d * d + 4 * d * F_ + 4 * T * d) + T * 4 * d * d + L * 4 * d * d + 4 * T * L * d
    head = 2.0 * T * d * V
    return ([token, enc_embed] + [enc_layer] * cfg.encoder_layers + [dec_embed]
            + [dec_layer] * cfg.decoder_layers + [head])


def partition_by_cost(costs: list[float], num_stages: int) -> list[int]:
    """Stage boundaries (DeepSpeed ``parts``: stage s owns [parts[s], parts[s+1])) that
    balance ``costs``, never splitting pieces 0 and 1 (see the activation contract)."""
    units = [costs[0] + costs[1]] + list(costs[2:])
    if num_stages > len(units):
        raise ValueError(f"{num_stages} pipeline stages but only {len(units)} pipeline pieces to place")
    parts = ds_utils.partition_balanced(weights=units, num_parts=num_stages)
    parts = [0] + [int(p) + 1 for p in parts[1:]]
    if any(b <= a for a, b in zip(parts, parts[1:])):
        raise ValueError(f"cost partition left a stage empty: {parts}")
    return parts


class OFAPipelineModule(PipelineModule):
    """``PipelineModule`` with ``partition_method="cost"`` (explicit per-piece weights)."""

    def __init__(self, layers, costs: list[float], **kwargs):
        self._ofa_costs = list(costs)  # read by _partition_layers inside super().__init__
        super().__init__(layers=layers, partition_method="cost", **kwargs)

    def _partition_layers(self, method="uniform"):
        if method != "cost":
            return super()._partition_layers(method)
        self.parts = partition_by_cost(self._ofa_costs, self.num_stages)
        stage = self._topo.get_coord(self.global_rank).pipe
        if self.global_rank == 0:
            names = [getattr(s, "typename", type(s)).__name__ for s in self._layer_specs]
            for s in range(self.num_stages):
                lo, hi = self.parts[s], self.parts[s + 1]
                share = sum(self._ofa_costs[lo:hi]) / sum(self._ofa_costs)
                logger.info("pipeline stage %d: layers %d-%d (%.0f%% of the cost): %s", s, lo, hi - 1,
                            100 * share, names[lo:hi])
        self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    def to_sequential(self) -> "OFAPipelineSequential":
        """All pieces built in one process (fresh weights; see ``load_single_state_dict``)."""
        return OFAPipelineSequential(self._layer_specs, self.loss_fn)


class OFAPipelineSequential(nn.Module):
    """The pipeline's pieces run in order on one device, the tied module shared as in the
    pipeline. Same forward contract as the pipeline: ``forward(inputs) -> logits``."""

    def __init__(self, specs: list, loss_fn=None):
        super().__init__()
        self.loss_fn = loss_fn
        self.tied_modules = nn.ModuleDict()
        self.pieces = nn.ModuleList()
        self._funcs = []
        for spec in specs:
            if isinstance(spec, TiedLayerSpec):
                if spec.key not in self.tied_modules:
                    self.tied_modules[spec.key] = spec.build()
                module = self.tied_modules[spec.key]
                self._funcs.append(module if spec.forward_fn is None else
                                   (lambda x, f=spec.forward_fn, m=module: f(m, x)))
            else:
                module = spec.build()
                self.pieces.append(module)
                self._funcs.append(module)

    def forward(self, inputs):
        x = inputs
        for func in self._funcs:
            x = func(x)
        return x


def _local_pieces(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, OFAPipelineSequential):
        return list(module.pieces) + list(module.tied_modules.values())
    return [f for f in module.forward_funcs if isinstance(f, nn.Module)] + list(module.tied_modules.values())


@torch.no_grad()
def load_single_state_dict(module: nn.Module, state_dict: dict) -> None:
    """Load a single-device ``OFAModel`` state dict into the pieces this rank holds (a
    pipeline module or its sequential twin), sharding for TP where the pieces are TP."""
    seen = set()
    for piece in _local_pieces(module):
        if id(piece) in seen:
            continue
        seen.add(id(piece))
        keys = piece.state_dict().keys()
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise KeyError(f"single-device state dict lacks {missing[:5]}")
        wanted = {k: state_dict[k] for k in keys}
        tp = getattr(piece, "tp_context", None)
        if tp is not None:
            wanted = shard_state_dict(wanted, tp)
        piece.load_state_dict(wanted, strict=True)


# -- entry points -------------------------------------------------------------------------------
def build_pipeline_module(cfg: OFAConfig, dims: ParallelDims, groups: ParallelGroups, loss_fn, *,
                          state_dict: dict | None = None, image_size: int = 480, text_len: int = 64,
                          tgt_len: int = 64, sample_patch_num: int | None = None, fixed_shapes: bool = False,
                          activation_checkpoint_interval: int = 0) -> OFAPipelineModule:
    """OFA as a ``PipelineModule`` over ``groups.topology`` (pp stages x tp x dp).

    ``image_size/text_len/tgt_len``: typical shapes, only used to weigh the pieces for the
    stage split. ``state_dict``: single-device weights to load (sharded for TP).
    ``loss_fn(logits_local, labels)``: e.g. ``make_pipeline_loss_fn(groups.tp, options)``.
    """
    if groups.dims is not dims and (groups.dims.pp, groups.dims.tp, groups.dims.dp) != (dims.pp, dims.tp, dims.dp):
        raise ValueError(f"groups were built for {groups.dims}, not {dims}")
    if dims.zero_stage >= 2:
        raise ValueError("the pipeline engine supports ZeRO 0/1 only; validate the dims first")
    tp = groups.tp if dims.tp > 1 else None
    specs = pipeline_specs(cfg, tp, sample_patch_num=sample_patch_num, fixed_shapes=fixed_shapes)
    costs = piece_costs(cfg, image_size=image_size, text_len=text_len, tgt_len=tgt_len)
    module = OFAPipelineModule(specs, costs, topology=groups.topology, loss_fn=loss_fn,
                               dynamic_shape=not fixed_shapes,
                               activation_checkpoint_interval=activation_checkpoint_interval)
    if state_dict is not None:
        load_single_state_dict(module, state_dict)
    return module


def make_pipeline_loss_fn(tp: TPContext | None = None, options: LossOptions = LossOptions(), *,
                          pad: int = 1, eos: int = 2, valid_vocab_size: int | None = None):
    """``loss_fn(logits, labels)`` for the pipeline's last stage: OFA's label-smoothed CE
    (vocab-parallel when tp > 1), summed over kept tokens and divided by their count.
    ``labels`` = (target [B,T], conf [B]) or (target, conf, constraint_masks [B,T,V])."""

    def loss_fn(logits, labels):
        target, conf = labels[0], labels[1]
        masks = labels[2] if len(labels) > 2 else None
        if tp is None or (tp.size == 1 and valid_vocab_size is None):
            out = label_smoothed_cross_entropy(logits, target, conf, options=options, constraint_masks_BTV=masks,
                                               pad=pad, eos=eos)
        else:
            from ofa_ds.parallel.cross_entropy import vocab_parallel_label_smoothed_cross_entropy

            out = vocab_parallel_label_smoothed_cross_entropy(
                logits, target, conf, tp=tp, options=options, constraint_masks_BTV=masks, pad=pad, eos=eos,
                valid_vocab_size=valid_vocab_size)
        return out.loss / max(out.ntokens, 1)

    return loss_fn


def pipeline_batch(batch: dict, float_dtype: torch.dtype | None = None) -> tuple:
    """A collated OFA batch dict -> ``(inputs, labels)`` in the pipeline's order.

    ``patch_images`` is required (text-only samples carry a blank image with
    ``patch_masks`` False, as OFA's collate does). ``float_dtype``: cast the images (bf16
    engines convert the module, not the inputs)."""
    B = batch["src_tokens"].shape[0]
    images = batch["patch_images"]
    if float_dtype is not None:
        images = images.to(float_dtype)
    masks = batch.get("patch_masks")
    code = batch.get("code_masks")
    inputs = (batch["src_tokens"], batch["prev_output_tokens"], images,
              torch.ones(B, dtype=torch.long) if masks is None else masks.long(),
              torch.zeros(B, dtype=torch.long) if code is None else code.long())
    conf = batch.get("conf")
    labels = (batch["target"], torch.ones(B) if conf is None else conf)
    if batch.get("constraint_masks") is not None:
        labels = labels + (batch["constraint_masks"],)
    return inputs, labels
