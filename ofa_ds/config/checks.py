"""Field checks over the typed config: every value has its declared type and a sane range.

``load.validate`` runs these first, so a bad value is refused before anything is built and the
message names the field (``optim.lr must be > 0, got -0.001``). The type check is generic over
the dataclass annotations (int, float, bool, str, ``X | None``, tuple, list, dict), so fields
added later are covered without a new line here; ranges are listed per field below.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing

# (section, field) -> (predicate, what it must be), for numbers whose range matters.
_UNIT_OPEN = (lambda v: 0 <= v < 1, "in [0, 1)")
_RANGES: dict[tuple[str, str], tuple] = {
    ("optim", "lr"): (lambda v: v > 0, "> 0"),
    ("optim", "end_lr"): (lambda v: v >= 0, ">= 0"),
    ("optim", "eps"): (lambda v: v > 0, "> 0"),
    ("optim", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("optim", "clip_norm"): (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    ("optim", "warmup_ratio"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("model", "dropout"): _UNIT_OPEN,
    ("model", "attention_dropout"): _UNIT_OPEN,
    ("model", "encoder_drop_path_rate"): _UNIT_OPEN,
    ("model", "decoder_drop_path_rate"): _UNIT_OPEN,
    ("model", "resnet_drop_path_rate"): _UNIT_OPEN,
    ("task", "label_smoothing"): _UNIT_OPEN,
    ("task", "drop_worst_ratio"): _UNIT_OPEN,
    ("task", "extras_weight"): (lambda v: v >= 0, ">= 0"),
    ("train", "micro_batch"): (lambda v: v >= 1, ">= 1"),
    ("train", "save_every"): (lambda v: v >= 0, ">= 0 (0: no checkpoints)"),
    ("train", "keep_last"): (lambda v: v >= 0, ">= 0 (0 keeps all)"),
    ("train", "log_every"): (lambda v: v >= 0, ">= 0"),
    ("train", "image_log_every"): (lambda v: v >= 0, ">= 0 (0: never)"),
    ("data", "num_workers"): (lambda v: v >= 0, ">= 0"),
    ("parallel", "tp"): (lambda v: v >= 1, ">= 1 (1: no tensor parallelism)"),
    ("parallel", "pp"): (lambda v: v >= 1, ">= 1 (1: no pipeline)"),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_error(value, annotation) -> str | None:
    """Why ``value`` does not fit ``annotation``, or None when it does (or the type is not one
    this check knows)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = [_type_error(value, a) for a in args if a is not type(None)]
        return None if any(e is None for e in errors) else errors[0]
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        return None if _is_number(value) and math.isfinite(value) else "a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (tuple, list)):
            return "a tuple"
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"a tuple of {len(args)} values"
            for item, arg in zip(value, args):
                if _type_error(item, arg):
                    return f"a tuple of {len(args)} values of type {', '.join(a.__name__ for a in args)}"
        return None
    if origin is list or annotation is list:
        return None if isinstance(value, list) else "a list"
    if origin is dict or annotation is dict:
        return None if isinstance(value, dict) else "a table (dict)"
    return None


def check_types(cfg) -> None:
    """Every field of every section holds its declared type (``max_steps=2.5``, ``lr=[0.001]``
    and ``micro_batch=8.0`` are refused here, naming the field)."""
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            want = _type_error(value, hints[f.name])
            if want is not None:
                raise ValueError(f"{section.name}.{f.name} must be {want}, got {value!r} "
                                 f"({type(value).__name__})")


def check_ranges(cfg) -> None:
    """The numeric ranges above, and stream names in ``data.weights``."""
    for (section, name), (ok, what) in _RANGES.items():
        value = getattr(getattr(cfg, section), name)
        if value is not None and not ok(value):
            raise ValueError(f"{section}.{name} must be {what}, got {value!r}")
    for i, beta in enumerate(cfg.optim.betas):
        if not 0 <= beta < 1:
            raise ValueError(f"optim.betas[{i}] must be in [0, 1), got {beta!r}")
    weights = cfg.data.weights
    if weights:
        from ofa_ds.data.mixture import EXTRA_STREAMS, VL

        known = (VL, *EXTRA_STREAMS)
        for stream, w in weights.items():
            if stream not in known:
                raise ValueError(f"data.weights names an unknown stream {stream!r}; known: {', '.join(known)}")
            if not _is_number(w) or not math.isfinite(w) or w < 0:
                raise ValueError(f"data.weights.{stream} must be a number >= 0, got {w!r}")
