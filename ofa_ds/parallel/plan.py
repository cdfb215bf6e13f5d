"""The OFA tensor-parallel plan: one table, applied in place; and its inverse.

``TP_PLAN`` maps module (or parameter) FQNs of the single-device ``OFAModel`` to a rule.
The first regex that fully matches wins. The FQNs are the ones in ``OFAModel`` and, by
construction, in every pipeline piece of ``ofa_ds.parallel.pipeline`` (the pieces mirror
the single-device names), so one table serves both.

What stays replicated, and why:

* the ResNet (``encoder.embed_images``) and ``encoder.image_proj``: convolutions would need
  their own TP scheme and are a small share of the parameters (~8 % of OFA-Huge);
* every LayerNorm over d, the type and absolute-position embeddings: tiny;
* the bias of every row-parallel linear (added once, after the reduction).

Replicated parameters get identical gradients on every TP rank *by construction*: their
inputs are replicated activations, and each crossing into the TP region is a
``copy_to_tp`` whose backward all-reduces the partial input gradients. We therefore do not
all-reduce them (that would hide bugs and cost bandwidth); ``replicated_mismatch`` checks
the claim, and the TP parity test asserts it. On GPUs with non-deterministic kernels
(cuDNN convolution backward in the ResNet) the copies can drift by rounding; set
``torch.backends.cudnn.deterministic = True`` or run ``replicated_mismatch`` periodically.

Dropout: the FFN activation dropout (between ``fc1`` and ``ffn_layernorm``) runs on the
sharded F dim; the plan moves it into the next TP module (``ShardedLayerNorm`` or
``RowParallelLinear``), which draws it with ``random.sharded_dropout`` (TP-degree
invariant), and zeroes the layer's own ``activation_dropout``. Attention dropout gets a
per-rank forked generator (``random.AttentionDropoutRNG``).
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn as nn

from ofa_ds.parallel.groups import ParallelGroups, SINGLE, TPContext
from ofa_ds.parallel.layers import (ColumnParallelLinear, HeadParallelEmbedding, RowParallelLinear,
                                    ShardedLayerNorm, VocabParallelEmbedding, VocabParallelHead,
                                    is_sharded, shard_parameter, shard_tensor)
from ofa_ds.parallel.random import AttentionDropoutRNG

_LAYER = r"(encoder|decoder)\.layers\.\d+"
_ATTN = _LAYER + r"\.(self_attn|encoder_attn)"

# fmt: off
TP_PLAN: tuple[tuple[str, str], ...] = (
    # shared token embedding (encoder.embed_tokens IS decoder.embed_tokens) and its tied head
    (r"(encoder|decoder)\.embed_tokens",                  "vocab"),
    (r"decoder\.output_projection",                       "vocab_head"),
    # attention: q/k/v split by heads, out_proj row, per-head gains split by heads
    (_ATTN + r"\.[qkv]_proj",                             "column"),
    (_ATTN + r"\.out_proj",                               "row"),
    (_ATTN + r"\.c_attn",                                 "head_param"),
    # FFN: fc1 column, LayerNorm over the sharded F, fc2 row
    (_LAYER + r"\.fc1",                                   "column"),
    (_LAYER + r"\.ffn_layernorm",                         "sharded_norm"),
    (_LAYER + r"\.fc2",                                   "row"),
    # per-head position biases: absolute (projections of the position embeddings) and relative
    (r"encoder\.pos_[qk]_linear",                         "column"),
    (r"decoder\.(self|cross)_pos_[qk]_linear",            "column"),
    (r"(encoder|decoder)\.(token|image)_rel_pos_table_list\.\d+", "head_table"),
    # linears kept replicated on purpose
    (r"encoder\.image_proj",                              "replicate"),
    (r"classification_heads\..*",                         "replicate"),
)
# fmt: on

# rule -> partition dim of (weight, bias); None = replicated
_DIMS = {
    "column": (0, 0), "row": (1, None), "vocab": (0, None), "vocab_head": (0, None),
    "head_table": (1, None), "sharded_norm": (0, 0), "head_param": (0, None), "replicate": (None, None),
}


def rule_for(fqn: str) -> str | None:
    for pattern, rule in TP_PLAN:
        if re.fullmatch(pattern, fqn):
            return rule
    return None


def partition_dim_for_key(key: str) -> int | None:
    """The dim along which state-dict entry ``key`` is split under TP (None: replicated)."""
    rule = rule_for(key)
    if rule == "head_param":
        return 0
    module, _, leaf = key.rpartition(".")
    rule = rule_for(module)
    if rule is None:
        return None
    weight_dim, bias_dim = _DIMS[rule]
    return bias_dim if leaf == "bias" else weight_dim


def _as_tp(tp) -> TPContext:
    if isinstance(tp, ParallelGroups):
        return tp.tp
    if isinstance(tp, TPContext):
        return tp
    if tp is None:
        return SINGLE
    return TPContext(tp, dist.get_rank(tp), dist.get_world_size(tp))  # a bare process group


_TP_TYPES = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, VocabParallelHead,
             HeadParallelEmbedding, ShardedLayerNorm)


def apply_tensor_parallel(model: nn.Module, tp, *, gather_output: bool = False) -> list[tuple[str, str]]:
    """Swap ``model``'s modules for their tensor-parallel versions in place, copying this
    rank's shard of the current weights. ``tp``: ``ParallelGroups``, ``TPContext``, a
    process group, or None (single process).

    Also works at tp = 1 (layers without communication; dropout then follows the same
    TP-invariant path as tp > 1). ``gather_output=True`` makes the tied head return full
    logits (generation). Returns the (fqn, rule) list that was applied.
    Raises ``ValueError`` for an ``nn.Linear`` that no rule covers.
    """
    tp = _as_tp(tp)
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError("the model's parameters are already ZeRO-3 partitioned (built under zero.Init or "
                         "after deepspeed.initialize); apply the TP plan to the full model first")
    refs: dict[int, list[tuple[nn.Module, str, str]]] = {}  # id(child) -> [(parent, attr, fqn)]
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None:
                fqn = f"{parent_name}.{attr}" if parent_name else attr
                refs.setdefault(id(child), []).append((parent, attr, fqn))
    modules = {id(m): m for m in model.modules()}

    applied, uncovered, new_for = [], [], {}
    # Embeddings first so the tied head can find its new weight.
    order = sorted(refs.items(), key=lambda kv: rule_for(kv[1][0][2]) != "vocab")
    for key, places in order:
        module = modules[key]
        if isinstance(module, _TP_TYPES):
            raise ValueError(f"{places[0][2]} is already tensor-parallel; apply the plan once")
        rules = {rule_for(fqn) for _, _, fqn in places}
        if len(rules) > 1:
            raise ValueError(f"module shared under names {[f for _, _, f in places]} gets conflicting rules {rules}")
        rule = rules.pop()
        if next(module.parameters(), None) is None:
            continue  # e.g. the pipeline pieces' nn.Identity stand-ins for embed_tokens
        if rule is None or rule == "replicate":
            if rule is None and isinstance(module, nn.Linear):
                uncovered.append(places[0][2])
            continue
        new = _build(rule, module, tp, new_for, gather_output)
        new_for[id(module.weight)] = new
        for parent, attr, fqn in places:
            setattr(parent, attr, new)
            applied.append((fqn, rule))
    if uncovered:
        raise ValueError(f"no tensor-parallel rule for nn.Linear {uncovered}; add a row to TP_PLAN "
                         f"(use 'replicate' to keep it whole)")

    for name, module in model.named_modules():
        for pname, param in list(module._parameters.items()):
            fqn = f"{name}.{pname}" if name else pname
            if param is not None and rule_for(fqn) == "head_param":
                setattr(module, pname, shard_parameter(param, 0, tp))
                applied.append((fqn, "head_param"))
        _move_dropout(module, tp)
    model.tp_context = tp
    return applied


def _build(rule: str, module: nn.Module, tp: TPContext, new_for: dict, gather_output: bool) -> nn.Module:
    if rule == "column":
        return ColumnParallelLinear.from_module(module, tp)
    if rule == "row":
        return RowParallelLinear.from_module(module, tp)
    if rule == "vocab":
        return VocabParallelEmbedding.from_module(module, tp)
    if rule == "vocab_head":
        embedding = new_for.get(id(module.weight))
        if embedding is None:
            raise ValueError("the output projection is not tied to a vocab-parallel embedding; "
                             "OFA ties decoder.output_projection to encoder.embed_tokens")
        return VocabParallelHead(embedding, gather_output=gather_output)
    if rule == "head_table":
        return HeadParallelEmbedding.from_module(module, tp)
    if rule == "sharded_norm":
        return ShardedLayerNorm.from_module(module, tp)
    raise AssertionError(rule)


def _move_dropout(module: nn.Module, tp: TPContext) -> None:
    p = getattr(module, "activation_dropout", 0.0)
    if p and isinstance(getattr(module, "fc2", None), RowParallelLinear):
        target = module.ffn_layernorm if isinstance(module.ffn_layernorm, ShardedLayerNorm) else module.fc2
        target.input_dropout, module.activation_dropout = p, 0.0
    if (tp.size > 1 and getattr(module, "dropout", 0.0) and isinstance(getattr(module, "v_proj", None),
                                                                         ColumnParallelLinear)
            and isinstance(getattr(module, "out_proj", None), RowParallelLinear)):
        module._tp_attention_rng = AttentionDropoutRNG(module, tp)


# -- state dicts across layouts ---------------------------------------------------------------
def shard_state_dict(full: dict, tp: TPContext) -> dict:
    """Rank ``tp.rank``'s state dict from a single-device one (pure; no communication)."""
    out = {}
    for key, value in full.items():
        dim = partition_dim_for_key(key)
        out[key] = value if dim is None else shard_tensor(value, dim, tp)
    return out


def merge_state_dicts(shards: list[dict]) -> dict:
    """The single-device state dict from the TP ranks' state dicts, in rank order (pure)."""
    out = {}
    for key, first in shards[0].items():
        dim = partition_dim_for_key(key)
        out[key] = first if dim is None else torch.cat([sd[key] for sd in shards], dim=dim)
    return out


@torch.no_grad()
def gather_tensor_parallel_state_dict(model: nn.Module, tp) -> dict:
    """All-gather every sharded tensor (collective over the TP group): the single-device
    state dict, same keys as ``OFAModel.state_dict()``, on every TP rank."""
    tp = _as_tp(tp)
    out = {}
    for key, value in model.state_dict(keep_vars=True).items():
        dim = getattr(value, "partition_dim", None) if is_sharded(value) else None
        expected = partition_dim_for_key(key)
        if dim != expected:
            raise ValueError(f"{key}: the module says partition_dim={dim}, the plan says {expected}")
        value = value.detach()
        if dim is None or tp.size == 1:
            out[key] = value.clone()
            continue
        parts = [torch.empty_like(value) for _ in range(tp.size)]
        dist.all_gather(parts, value.contiguous(), group=tp.group)
        out[key] = torch.cat(parts, dim=dim)
    return out


@torch.no_grad()
def replicated_mismatch(model: nn.Module, tp, what: str = "grad") -> dict[str, float]:
    """Max |difference| across the TP group of every replicated parameter (``what`` =
    "grad" or "param"); {} when all copies agree bit for bit. Collective."""
    tp = _as_tp(tp)
    if tp.size == 1:
        return {}
    names, flats = [], []
    for name, p in model.named_parameters():
        t = p.grad if what == "grad" else getattr(p, "ds_tensor", p)  # ZeRO-3: the same slice on TP peers
        if is_sharded(p) or t is None:
            continue
        names.append(name)
        flats.append(t.detach().double().reshape(-1))
    if not flats:
        return {}
    flat = torch.cat(flats)
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=tp.group)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=tp.group)
    diffs = (hi - lo).split([f.numel() for f in flats])
    return {n: float(d.max()) for n, d in zip(names, diffs) if d.numel() and float(d.max()) > 0}
