"""Which implementation of each kernel runs, and why.

Every op has a plain-PyTorch implementation that runs everywhere and is the parity
reference, plus optional fused ones (SDPA, Triton, apex). An op resolves per device type
("cpu", "cuda"): an explicit override (``set_impl``) wins, otherwise the first
implementation in the op's preference list for that device whose availability check
passes. The decision and its reason are logged once per (op, device type) and printed by
``ofa-ds env``.

Implementations are imported lazily (``load``), so importing the model never imports
Triton, apex or DeepSpeed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Impl:
    name: str
    load: Callable[[], Callable]
    """Returns the callable (imported on first use)."""
    unavailable: Callable[[str], str | None]
    """device type -> None when usable there, else a short reason why not."""
    about: str


@dataclass
class Op:
    name: str
    impls: dict[str, Impl]
    preference: dict[str, tuple[str, ...]]
    """device type -> implementations to try in order; "default" for other device types."""
    override: str = AUTO
    resolved: dict[str, tuple[str, str]] = field(default_factory=dict)
    loaded: dict[str, Callable] = field(default_factory=dict)


_OPS: dict[str, Op] = {}


def always(device_type: str) -> str | None:
    return None


def register_op(name: str, impls: list[Impl], preference: dict[str, tuple[str, ...]]) -> None:
    if "default" not in preference:
        raise ValueError(f"op {name!r}: preference needs a 'default' entry")
    _OPS[name] = Op(name, {impl.name: impl for impl in impls}, preference)


def _op(name: str) -> Op:
    if name not in _OPS:
        raise ValueError(f"unknown kernel op {name!r}; known: {sorted(_OPS)}")
    return _OPS[name]


def op_names() -> list[str]:
    return list(_OPS)


def impl_names(op: str) -> list[str]:
    return list(_op(op).impls)


def set_impl(op: str, name: str) -> None:
    """Pin ``op`` to implementation ``name`` on every device, or ``"auto"`` to choose per device."""
    spec = _op(op)
    if name != AUTO and name not in spec.impls:
        raise ValueError(f"unknown implementation {name!r} for kernel {op!r}; "
                         f"choose from {[AUTO, *spec.impls]}")
    if spec.override != name:
        logger.info("kernel %s: implementation set to %s", op, name)
    spec.override = name
    spec.resolved.clear()


def configure(choices: dict[str, str] | None) -> None:
    """Apply a config section like ``{"attention": "sdpa", "bias_gelu": "auto"}``."""
    for op, name in (choices or {}).items():
        set_impl(op, name)


def resolve(op: str, device_type: str) -> tuple[str, str]:
    """(implementation name, reason) for ``op`` on ``device_type``; cached and logged once."""
    spec = _op(op)
    hit = spec.resolved.get(device_type)
    if hit is not None:
        return hit
    if spec.override != AUTO:
        why_not = spec.impls[spec.override].unavailable(device_type)
        if why_not is not None:
            raise RuntimeError(f"kernel {op!r} is set to {spec.override!r}, which cannot run on "
                               f"{device_type}: {why_not}")
        choice = (spec.override, "set explicitly")
    else:
        skipped = []
        order = spec.preference.get(device_type, spec.preference["default"])
        for name in order:
            why_not = spec.impls[name].unavailable(device_type)
            if why_not is None:
                reason = f"auto for {device_type}"
                if skipped:
                    reason += " (" + "; ".join(skipped) + ")"
                choice = (name, reason)
                break
            skipped.append(f"{name}: {why_not}")
        else:
            raise RuntimeError(f"no implementation of {op!r} can run on {device_type}: {skipped}")
    spec.resolved[device_type] = choice
    logger.info("kernel %s on %s: %s [%s]", op, device_type, *choice)
    return choice


def get(op: str, device_type: str) -> Callable:
    """The callable that implements ``op`` on ``device_type``."""
    spec = _op(op)
    name, _ = resolve(op, device_type)
    fn = spec.loaded.get(name)
    if fn is None:
        fn = spec.loaded[name] = spec.impls[name].load()
    return fn


def describe(device_type: str) -> list[dict]:
    """One row per op: active implementation and reason, and each candidate's status."""
    rows = []
    for name, spec in _OPS.items():
        try:
            active, reason = resolve(name, device_type)
        except RuntimeError as err:
            active, reason = "-", str(err)
        candidates = {impl: (spec.impls[impl].unavailable(device_type) or "available")
                      for impl in spec.impls}
        rows.append(dict(op=name, active=active, reason=reason, candidates=candidates))
    return rows
