"""One place that picks kernel implementations.

Model code calls ``attention(...)``; which function runs is decided here, once. The
reference path is the default on CPU; ``set_attention_impl`` overrides it (config and tests).
"""
from __future__ import annotations

import logging

from ofa_ds.kernels.attention import reference_attention, sdpa_attention

logger = logging.getLogger(__name__)

ATTENTION_IMPLS = {"reference": reference_attention, "sdpa": sdpa_attention}
_active = {"attention": "reference"}


def set_attention_impl(name: str) -> None:
    if name not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {name!r}; choose from {list(ATTENTION_IMPLS)}")
    if _active["attention"] != name:
        logger.info("attention implementation: %s", name)
    _active["attention"] = name


def attention_impl() -> str:
    return _active["attention"]


def attention(*args, **kwargs):
    return ATTENTION_IMPLS[_active["attention"]](*args, **kwargs)
