"""A layout-free copy of a training checkpoint, so ``--resume`` can change TP, PP, DP or
the ZeRO stage, and ``ofa-ds convert`` can export any mid-run checkpoint.

DeepSpeed's own files (kept for the exact same-layout resume) are cut by the writer's
layout: TP shards, pipeline layer files, ZeRO partitions of flattened groups. Next to them,
``step_N/portable/`` holds, per model-parallel position (TP rank x PP stage, written by its
data-parallel rank 0), the fp32 master weights, Adam's two moments and the buffers of the
parameters it holds, under single-device names (``encoder.layers.3.fc1.weight``), still
TP-sharded along the plan's dimension (``parallel.plan.partition_dim_for_key``)::

    portable/meta.pt           layout, Adam step, LR schedule, model config (rank 0)
    portable/tp{t}_pp{p}.pt    {"param": {name: fp32}, "exp_avg": ..., "exp_avg_sq": ..., "buffer": ...}

Reading merges the TP shards (``plan.merge_state_dicts``), cuts the padded vocabulary rows,
and gives each reader rank its own slice in its own layout. Everything is plain tensors,
dicts, ints and strings: ``torch.load(weights_only=True)`` reads it. Cost: one all-reduce per
tensor over the DP group at save time (DeepSpeed's ``safe_get_full_*``), and disk for one
more fp32 copy of weights + moments.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

DIR, META = "portable", "meta.pt"
LAYOUT_FILE = "layout.json"
STATES = ("exp_avg", "exp_avg_sq")
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
VOCAB_ROWS = TIED


def shard_file(tp_rank: int, pp_rank: int) -> str:
    return f"tp{tp_rank}_pp{pp_rank}.pt"


# -- which parameters this rank holds, under single-device names ------------------------------
def local_modules(engine_module: nn.Module) -> list[nn.Module]:
    """The modules whose ``named_parameters()`` carry single-device names on this rank."""
    from deepspeed.runtime.pipe import PipelineModule

    if isinstance(engine_module, PipelineModule):
        from ofa_ds.parallel.pipeline import _local_pieces

        return _local_pieces(engine_module)
    return [engine_module]


def named_tensors(engine_module: nn.Module):
    """(name, parameter) and (name, buffer) lists, each name once, in a fixed order."""
    params, buffers, seen = [], [], set()
    for module in local_modules(engine_module):
        for name, p in module.named_parameters():
            if name not in seen and id(p) not in seen:
                seen.update((name, id(p)))
                params.append((name, p))
        for name, b in module.named_buffers():
            if name not in seen:
                seen.add(name)
                buffers.append((name, b))
    return params, buffers


# -- the optimizer side -----------------------------------------------------------------------
def _inner_optimizer(engine):
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _zero_managed(p) -> bool:
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _full_value(engine, p, key: str | None):
    """The full (DP-gathered) fp32 master value or Adam moment of a local parameter; None
    when it has none (a frozen parameter's moments). Collective over DP for ZeRO params."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if _zero_managed(p) and p.requires_grad:
        return safe_get_full_fp32_param(p) if key is None else safe_get_full_optimizer_state(p, key)
    if key is None:
        if hasattr(p, "ds_id"):  # a frozen ZeRO-3 parameter: gather its lp value
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                return p.detach().float().clone()
        return p.detach().float().clone()
    state = _inner_optimizer(engine).state.get(p, {})
    return state[key].detach().clone() if key in state else None


def adam_step(engine) -> int:
    steps = [s["step"] for s in _inner_optimizer(engine).state.values() if "step" in s]
    return int(steps[0]) if steps else 0


def ensure_adam_state(engine, step: int) -> None:
    """Create the (lazily built) Adam state now, with ``step``, so its slices can be set."""
    opt = engine.optimizer
    inner = _inner_optimizer(engine)
    # ZeRO-3 puts its flat fp32 partitions into the param groups only during step().
    targets = getattr(opt, "fp32_partitioned_groups_flat", None) or [p for g in inner.param_groups
                                                                      for p in g["params"]]
    for p in targets:
        state = inner.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] = torch.tensor(float(step))
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2, bf16 optimizer
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


# -- save -------------------------------------------------------------------------------------
def save(engine, step_dir: Path, *, layout, step: int, valid_vocab_size: int, model_config: dict,
         scheduler_state: dict) -> None:
    """Collective: every rank calls it; DP rank 0 of each (TP, PP) position writes."""
    params, buffers = named_tensors(engine.module)
    out = {"param": {}, "buffer": {}, **{k: {} for k in STATES}}
    for name, p in params:
        for key in (None, *STATES):
            value = _full_value(engine, p, key)
            if value is not None:
                out["param" if key is None else key][name] = value.cpu()
    out["buffer"] = {name: b.detach().cpu().clone() for name, b in buffers}
    groups = layout.groups
    tp_rank, pp_rank = (groups.tp_rank, groups.pp_rank) if groups is not None else (0, 0)
    folder = step_dir / DIR
    folder.mkdir(parents=True, exist_ok=True)
    if layout.dp_rank == 0:
        torch.save(out, folder / shard_file(tp_rank, pp_rank))
    if torch.distributed.get_rank() == 0:
        writer = layout.describe()
        torch.save({"format": 1, **writer, "step": step, "adam_step": adam_step(engine),
                    "valid_vocab_size": valid_vocab_size, "model_config": model_config,
                    "scheduler": scheduler_state}, folder / META)
        (step_dir / LAYOUT_FILE).write_text(json.dumps({**writer, "portable": True}) + "\n")


# -- read -------------------------------------------------------------------------------------
def read_meta(step_dir: Path) -> dict:
    return torch.load(step_dir / DIR / META, map_location="cpu", weights_only=True)


def merged_state(step_dir: Path, kind: str = "param") -> dict:
    """The single-device tensors of ``kind`` (param | exp_avg | exp_avg_sq | buffer),
    merged over the writer's TP ranks and stages, vocabulary cut to its real size."""
    from ofa_ds.parallel.plan import merge_state_dicts

    meta = read_meta(step_dir)
    full = {}
    for pp_rank in range(meta["pp"]):
        shards = [torch.load(step_dir / DIR / shard_file(t, pp_rank), map_location="cpu", weights_only=True,
                             mmap=True)[kind] for t in range(meta["tp"])]
        stage = merge_state_dicts(shards) if kind != "buffer" else dict(shards[0])
        for key, value in stage.items():
            full.setdefault(key, value)
    v = meta["valid_vocab_size"]
    return {k: (t[:v] if k in VOCAB_ROWS else t) for k, t in full.items()}


def _lookup(full: dict, name: str):
    if name in full:
        return full[name]
    if name in TIED:
        return next((full[k] for k in TIED if k in full), None)
    return None


def _local_slice(full_value: torch.Tensor, name: str, p: torch.Tensor, tp) -> torch.Tensor:
    """This rank's piece of a single-device tensor: vocabulary padded to this layout's rows,
    then this TP rank's shard."""
    from ofa_ds.parallel.layers import shard_tensor
    from ofa_ds.parallel.plan import partition_dim_for_key

    dim = partition_dim_for_key(name) if tp is not None and tp.size > 1 else None
    shape = list(getattr(p, "ds_shape", p.shape))
    if name in VOCAB_ROWS:
        rows = shape[0] * (tp.size if dim == 0 else 1)
        if rows > full_value.shape[0]:
            pad = full_value.new_zeros(rows - full_value.shape[0], *full_value.shape[1:])
            full_value = torch.cat([full_value, pad])
    value = full_value if dim is None else shard_tensor(full_value, dim, tp)
    if list(value.shape) != shape:
        raise ValueError(f"{name}: the checkpoint gives {tuple(value.shape)} for this rank, the model has "
                         f"{tuple(shape)}")
    return value


@torch.no_grad()
def load(engine, step_dir: Path, *, layout) -> dict:
    """Set this rank's weights, Adam moments and step from ``step_dir/portable``; returns
    the meta (schedule state etc.). Collective under ZeRO-3 (gathers to write weights)."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    meta = read_meta(step_dir)
    values = {kind: merged_state(step_dir, kind) for kind in ("param", *STATES, "buffer")}
    ensure_adam_state(engine, meta["adam_step"])
    tp = layout.groups.tp if layout.groups is not None and layout.tp > 1 else None
    params, buffers = named_tensors(engine.module)
    inner = _inner_optimizer(engine)
    for name, p in params:
        full = _lookup(values["param"], name)
        if full is None:
            raise ValueError(f"{step_dir}: no weights for {name} (written by {meta['tp']}x{meta['pp']} TPxPP)")
        weight = _local_slice(full, name, p, tp)
        if hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(weight.to(p.dtype))
        else:
            p.data.copy_(weight.to(p.dtype))
        if not p.requires_grad:
            continue
        moments = {k: _lookup(values[k], name) for k in STATES}
        if _zero_managed(p):
            safe_set_full_fp32_param(p, weight.float().to(p.device))
            for key, m in moments.items():
                if m is not None:
                    safe_set_full_optimizer_state(p, _local_slice(m, name, p, tp).float().to(p.device), key)
        else:
            for key, m in moments.items():
                if m is not None:
                    inner.state[p][key].copy_(_local_slice(m, name, p, tp))
    for name, b in buffers:
        if name in values["buffer"] and values["buffer"][name].shape == b.shape:
            b.copy_(values["buffer"][name])
    return meta


def read_writer_layout(step_dir: Path) -> dict | None:
    """The writer's layout from ``layout.json`` (None: an older checkpoint without one)."""
    path = step_dir / LAYOUT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def layout_of(cfg, world_size: int) -> dict:
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    return {"tp": tp, "pp": pp, "dp": world_size // max(tp * pp, 1), "world_size": world_size,
            "zero_stage": cfg.train.zero_stage}


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("tp", "pp", "dp", "zero_stage"))


def check_resume(cfg, world_size: int) -> str:
    """Before any process group exists: how ``--resume`` will load ``latest`` ("same":
    DeepSpeed's files; "portable": the layout-free copy), or a ValueError that names the
    writer's layout and the fix."""
    from ofa_ds.engine.checkpoint import read_latest

    ckpt_dir = Path(cfg.train.out_dir) / "checkpoints"
    tag = read_latest(ckpt_dir)
    if tag is None:
        return "same"  # checkpoint.load explains the missing checkpoint
    writer = read_writer_layout(ckpt_dir / tag)
    reader = layout_of(cfg, world_size)
    if writer is None or _same(writer, reader):
        return "same"
    def show(d):
        return f"tp={d['tp']}, pp={d['pp']}, dp={d['dp']} ({d['world_size']} ranks), ZeRO-{d['zero_stage']}"
    where = f"{ckpt_dir / tag} was written with {show(writer)}; this run is {show(reader)}"
    if not writer.get("portable"):
        raise ValueError(f"{where}, and it has no layout-free copy (train.layout_free_checkpoint was off). "
                         f"Resume with parallel.tp={writer['tp']} parallel.pp={writer['pp']} "
                         f"train.zero_stage={writer['zero_stage']} on {writer['world_size']} ranks, or start "
                         f"a new run from its weights only (model.init_from after `ofa-ds convert`)")
    if cfg.model.moe_layers:
        raise ValueError(f"{where}: mixture-of-experts weights do not move across layouts yet; resume with "
                         f"the writer's layout (parallel.tp={writer['tp']} parallel.pp={writer['pp']}, "
                         f"{writer['world_size']} ranks, train.zero_stage={writer['zero_stage']})")
    return "portable"
