"""Loading resume checkpoints without running code from them.

A ``.pt`` file is a pickle, and ``torch.load(weights_only=False)`` runs whatever callable the
pickle names: a crafted ``ofa_rank0.pt`` or ``mp_rank_00_model_states.pt`` in a run directory
would execute on ``--resume``. Everything here loads with ``weights_only=True``: tensors, plain
containers (dict, list, tuple, set, OrderedDict), numbers, strings, plus the allow-list below,
which is exactly what ofa-ds and the installed DeepSpeed write.

DeepSpeed 0.19's ``TorchCheckpointEngine.load`` calls ``torch.load(weights_only=False)`` with no
option to change it; every file ``engine.load_checkpoint`` reads (model states, ZeRO optimizer
partitions, pipeline layers, MoE experts) goes through ``engine.checkpoint_engine.load``, so
:func:`guard_deepspeed_loads` replaces that method on our engine. (DeepSpeed's universal
checkpoint loaders call ``torch.load`` directly; ofa-ds does not use universal checkpoints.)

The one opt-out, for trusted checkpoints from an older ofa-ds or DeepSpeed whose types are not
allow-listed: ``train.trust_checkpoint_pickle=true``. It loads with full pickle.
"""
from __future__ import annotations

import functools
import pickle
import re

import torch

OPT_OUT = "train.trust_checkpoint_pickle=true"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than the allow-listed types."""


@functools.cache
def allowed_globals() -> tuple:
    """Classes the resume files may hold beyond tensors and plain containers."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    # Numeric numpy arrays (numpy's RNG state in ofa_rank*.pt); never object arrays.
    numpy_types = [_reconstruct, np.ndarray, np.dtype]
    numpy_types += [type(np.dtype(c)) for c in np.typecodes["All"] if c != "O"]
    # Small records in DeepSpeed's ZeRO optimizer files (loss scaler, stage, fragment addresses).
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return tuple(dict.fromkeys(numpy_types + [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]))


def _why(err: Exception) -> str:
    text = str(err)
    m = re.search(r"(Unsupported global: GLOBAL [\w.]+|Can only build [^\n]*|WeightsUnpickler error: [^\n]*)", text)
    return m.group(1) if m else text.strip().splitlines()[0]


def safe_load(path, map_location="cpu", *, trusted: bool = False):
    """``torch.load`` that refuses (``UnsafeCheckpointError``) a file needing other types."""
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it needs a type outside the checkpoint allow-list ({_why(err)}), "
            f"and unpickling it could run code. If you trust this file (e.g. written by an older ofa-ds "
            f"or DeepSpeed), resume with {OPT_OUT}") from None


def guard_deepspeed_loads(engine, *, trusted: bool = False) -> None:
    """Make ``engine.load_checkpoint`` read every file through :func:`safe_load`."""
    engine.checkpoint_engine.load = functools.partial(_engine_load, trusted=trusted)


def _engine_load(path, map_location=None, *, trusted: bool):
    return safe_load(path, map_location, trusted=trusted)
