"""Availability checks for the optional kernel backends (each returns None or why not).

Only import-time facts and device types are checked; nothing is compiled here.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken optional package must not break the model
        return f"{type(err).__name__}: {err}"
    return None


def triton_unavailable(device_type: str) -> str | None:
    err = _import_error("triton")
    if err is not None:
        return f"triton not importable ({err})"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device_type == "cpu" and interpreting():
        return None
    return f"Triton kernels need CUDA (on {device_type} only under TRITON_INTERPRET=1, for tests)"


def apex_unavailable(device_type: str) -> str | None:
    if device_type != "cuda" or not torch.cuda.is_available():
        return "apex kernels are CUDA-only"
    # PyPI's 'apex' is an unrelated web toolkit; only NVIDIA apex has apex.normalization.
    err = _import_error("apex.normalization")
    if err is not None:
        return f"NVIDIA apex not importable ({err}); it is built from source, never from PyPI"
    return None


def cuda_only(device_type: str) -> str | None:
    return None if device_type == "cuda" and torch.cuda.is_available() else "needs CUDA"


def default_device_type() -> str:
    """Where modules built now will most likely run (used by module factories)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def version_of(module: str) -> str:
    if _import_error(module) is not None:
        return "not installed"
    mod = importlib.import_module(module)
    return str(getattr(mod, "__version__", "installed (no __version__)"))
