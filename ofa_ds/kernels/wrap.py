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
* ``apply_speed_options``: the speed switches of :class:`SpeedOptions` (relative-bias
  lookup, channels-last ResNet, mixed-input BatchNorm, regional compile, CUDA graphs, cuDNN
  autotuning), from ``model.*`` in the training config or ``ofa-ds bench train --variants``.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


def _transformer_layers(model: nn.Module) -> list[nn.Module]:
    from ofa_ds.model.layers import DecoderLayer, EncoderLayer

    if getattr(model, "ofa_pipeline_piece", False):  # a pipeline piece: whichever layers it holds
        return [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
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


@dataclass
class SpeedOptions:
    """Training-speed switches that must not change the numbers (each has a parity test in
    tests/unit/test_throughput.py; ``ofa-ds bench train`` times each one alone)."""

    rel_pos_bias: str = "auto"
    """Relative-position table lookup: auto | embedding | gather (no sort in the backward)."""
    channels_last: bool = False
    """ResNet convolutions on NHWC activations."""
    mixed_batchnorm: bool = False
    """BatchNorm takes bf16/fp16 activations with float32 statistics (no cast copies)."""
    compile: str = "none"
    """torch.compile regions: none | layers (each encoder/decoder layer) | resnet | all."""
    cuda_graphs: bool = False
    """Compiled regions replay as CUDA graphs (mode reduce-overhead); CUDA only."""
    cudnn_benchmark: bool = False
    """cuDNN autotuning of the convolution algorithms (fixed image sizes)."""

    COMPILE_CHOICES = ("none", "layers", "resnet", "all")

    def validate(self) -> None:
        if self.compile not in self.COMPILE_CHOICES:
            raise ValueError(f"compile={self.compile!r}; choose from {self.COMPILE_CHOICES}")
        if self.cuda_graphs and self.compile == "none":
            raise ValueError("cuda_graphs replays compiled regions: set compile to layers, resnet or all")


def compile_mode(options: SpeedOptions, device_type: str) -> str | None:
    """The torch.compile mode: CUDA graphs exist on CUDA only; elsewhere the default mode."""
    if options.cuda_graphs and device_type != "cuda":
        logger.info("cuda_graphs requested on %s: compiling without CUDA graphs", device_type)
        return None
    return "reduce-overhead" if options.cuda_graphs else None


def apply_speed_options(model: nn.Module, options: SpeedOptions, device_type: str, *,
                        compile_backend: str = "inductor") -> nn.Module:
    """Apply ``options`` to an OFAModel in place (after checkpointing; compile comes last).
    ``compile_backend``: tests use "aot_eager" (same graph capture, no C++/Triton codegen:
    inductor's first CPU step of the test flavor takes ~3.5 minutes on 2 cores)."""
    from ofa_ds.kernels import set_impl
    from ofa_ds.model.resnet import set_mixed_input_batchnorm

    options.validate()
    set_impl("rel_pos_bias", options.rel_pos_bias)
    set_mixed_input_batchnorm(options.mixed_batchnorm)
    resnet = model.encoder.embed_images
    resnet.use_channels_last(options.channels_last)
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
    mode = compile_mode(options, device_type)
    if options.compile in ("layers", "all"):
        maybe_compile(model, backend=compile_backend, mode=mode)
    if options.compile in ("resnet", "all"):
        resnet.compile(backend=compile_backend, mode=mode)
        logger.info("torch.compile on the ResNet (mode %s)", mode or "default")
    return model
