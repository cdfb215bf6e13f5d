"""Activation checkpointing and torch.compile for OFA, applied after the model is built.

Both wrap the encoder and decoder layers in place: the module tree and the state-dict
keys do not change (no wrapper modules), so checkpoints load the same with or without
them. Order, as in torchtitan: checkpointing first, then compile.

* ``apply_activation_checkpointing``: non-reentrant ``torch.utils.checkpoint`` around each
  layer's forward. The RNG state is replayed for the recomputation, so dropout masks
  match and loss and gradients equal the plain model's exactly. Calls without autograd
  (eval, incremental decoding) run the plain forward.
* ``maybe_compile``: ``nn.Module.compile`` per layer (one graph per layer type; the
  embedding code with its data-dependent patch sampling stays eager).
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


def _transformer_layers(model: nn.Module) -> list[nn.Module]:
    layers = []
    for part in ("encoder", "decoder"):
        stack = getattr(getattr(model, part, None), "layers", None)
        if stack is None:
            raise ValueError(f"model has no {part}.layers; pass an OFAModel")
        layers.extend(stack)
    return layers


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.ofa_checkpointed = True
    return run


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute every encoder/decoder layer in backward instead of storing its activations."""
    n = 0
    for layer in _transformer_layers(model):
        if getattr(layer.forward, "ofa_checkpointed", False):
            continue
        layer.forward = _checkpointed(layer.forward)
        n += 1
    logger.info("activation checkpointing on %d layers", n)
    return model


def maybe_compile(model: nn.Module, enabled: bool = True, *, backend: str = "inductor",
                  mode: str | None = None, dynamic: bool | None = None) -> nn.Module:
    """Compile each encoder/decoder layer in place (``enabled=False`` returns the model as is)."""
    if not enabled:
        return model
    layers = _transformer_layers(model)
    for layer in layers:
        layer.compile(backend=backend, mode=mode, dynamic=dynamic)
    logger.info("torch.compile (%s) on %d layers", backend, len(layers))
    return model
