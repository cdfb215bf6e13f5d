"""Config loading: defaults < TOML file < ``section.field=value`` overrides; then validate."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import tomllib
import typing
import warnings
from pathlib import Path

from ofa_ds.config.checks import check_ranges, check_types
from ofa_ds.config.schema import TaskSection, TrainConfig


def _coerce(value, annotation, where: str):
    """Turn a TOML value or a command-line string into the field's declared type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(value, str) and annotation is not str and value.lower() in ("none", "null"):
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        annotation, origin = args[0], typing.get_origin(args[0])
    if isinstance(value, str) and annotation is not str:
        if annotation is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{where}: expected true/false, got {value!r}")
            return value.lower() in ("true", "1")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{where}: cannot parse {value!r} as {annotation}") from err
    if annotation is float and isinstance(value, int):
        return float(value)
    if origin is tuple:
        return tuple(value)
    return value


# Fields that moved: old name -> (new section, new field). Old configs keep working (with a
# warning) instead of failing on an unknown field.
MOVED = {("data", "caption_train"): ("task", "train"), ("data", "caption_valid"): ("task", "valid")}


def unknown_name(kind: str, name: str, known) -> str:
    """One line: the unknown name and the nearest valid ones (all of them when none is near)."""
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else f"valid: {', '.join(sorted(known))}"
    return f"unknown {kind} {name!r}; {hint}"


def _apply(section, values: dict, where: str, cfg=None) -> None:
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        name = where.rsplit(" ", 1)[-1]
        if cfg is not None and (name, key) in MOVED:
            new_section, new_key = MOVED[(name, key)]
            warnings.warn(f"{where}.{key} is now {new_section}.{new_key}; please rename it", DeprecationWarning)
            _apply(getattr(cfg, new_section), {new_key: value}, f"{where.rsplit(' ', 1)[0]} {new_section}")
            continue
        if key == "options" and isinstance(section, TaskSection):
            # Typed later by the task's own Options dataclass (tasks.parse_options).
            section.options = {**section.options, **value} if isinstance(value, dict) else value
            continue
        if key.startswith("options.") and isinstance(section, TaskSection):
            section.options = {**section.options, key.split(".", 1)[1]: value}
            continue
        if key not in hints:
            raise ValueError(f"{where}: {unknown_name('field', key, hints)}")
        setattr(section, key, _coerce(value, hints[key], f"{where}.{key}"))


def _sections(cfg: TrainConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg)]


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    cfg = TrainConfig()
    if path is not None:
        data = tomllib.loads(Path(path).read_text())
        for name, values in data.items():
            if not hasattr(cfg, name) or not isinstance(values, dict):
                raise ValueError(f"{path}: {unknown_name('section', name, _sections(cfg))}")
            _apply(getattr(cfg, name), values, f"{path}: {name}", cfg)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r}: use section.field=value, e.g. train.max_steps=10")
        key, value = item.split("=", 1)
        section, field_name = key.strip().split(".", 1)
        if not hasattr(cfg, section):
            raise ValueError(f"override {item!r}: {unknown_name('section', section, _sections(cfg))}")
        _apply(getattr(cfg, section), {field_name: value}, f"override {section}", cfg)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Refuse a bad config before anything is built; each message names the field."""
    check_types(cfg)  # first: the checks below compare numbers
    check_ranges(cfg)
    t = cfg.train
    if t.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be fp32, bf16 or fp16, not {t.precision!r}")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage must be 0-3, not {t.zero_stage}")
    if t.precision == "bf16" and t.zero_stage == 0:
        raise ValueError("train.precision=bf16 needs fp32 master weights and gradient accumulation, which "
                         "DeepSpeed provides from ZeRO stage 1: set train.zero_stage=1 (the same communication "
                         "as plain data parallelism)")
    if t.offload and t.zero_stage != 3:
        raise ValueError("train.offload needs train.zero_stage=3")
    if cfg.task.name == "pretrain" and t.micro_batch % 8:
        raise ValueError(f"train.micro_batch={t.micro_batch}: pretraining needs a multiple of 8 "
                         "vision-language rows per rank, so every micro-batch has its extras group")
    from ofa_ds.tasks import parse_options

    parse_options(cfg)  # a known task.name and its typed [task.options]
    if t.max_steps < 1 or t.grad_accum < 1:
        raise ValueError("train.max_steps and train.grad_accum must be >= 1")


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
