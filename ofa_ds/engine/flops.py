"""Model FLOPs of one training step, counted per component (not 6*N).

ResNet FLOPs come from the conv output shapes of a meta-device forward; the transformer
terms are the matmuls of each layer, the position-bias projections and the output
projection. Training = 3 x forward (backward costs two forwards). Multiply-add = 2 FLOPs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ofa_ds.model.config import OFAConfig
from ofa_ds.model.resnet import ResNetBackbone


@functools.lru_cache(maxsize=16)
def resnet_forward_flops(blocks: tuple, image_size: int) -> int:
    """FLOPs of one image through the 3-stage ResNet (convolutions only)."""
    with torch.device("meta"):
        net = ResNetBackbone(blocks)
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * module.in_channels * k * output.shape[1] * output.shape[2] * output.shape[3]

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    net(torch.empty(1, 3, image_size, image_size, device="meta"))
    return total


def transformer_forward_flops(cfg: OFAConfig, n_patches: int, src_len: int, tgt_len: int) -> dict:
    d, F, V = cfg.embed_dim, cfg.ffn_dim, cfg.vocab_size
    L, T = n_patches + src_len, tgt_len
    proj = lambda n: 2 * n * d * d
    enc_layer = 4 * proj(L) + 2 * 2 * L * L * d + 2 * 2 * L * d * F
    dec_layer = (4 * proj(T) + 2 * 2 * T * T * d  # self-attention
                 + 2 * proj(T) + 2 * proj(L) + 2 * 2 * T * L * d  # cross-attention
                 + 2 * 2 * T * d * F)
    return {
        "image_proj": 2 * n_patches * 1024 * d,
        "encoder": cfg.encoder_layers * enc_layer + 2 * proj(L) + 2 * L * L * d,
        "decoder": cfg.decoder_layers * dec_layer + 2 * proj(T) + 2 * T * T * d + proj(T) + proj(L) + 2 * T * L * d,
        "output_projection": 2 * T * d * V,
    }


def training_step_flops(cfg: OFAConfig, groups) -> dict:
    """``groups``: iterable of (image side, src len, tgt len, n samples, sampled patches|None)."""
    totals = {"resnet": 0, "image_proj": 0, "encoder": 0, "decoder": 0, "output_projection": 0}
    for image_size, src_len, tgt_len, n, sampled in groups:
        grid = (image_size // 16) ** 2
        patches = sampled if sampled is not None else grid
        if image_size:  # 0: a text-only batch (no ResNet)
            totals["resnet"] += 3 * n * resnet_forward_flops(tuple(cfg.resnet_layers), image_size)
        for k, v in transformer_forward_flops(cfg, patches, src_len, tgt_len).items():
            totals[k] += 3 * n * v
    totals["total"] = sum(totals.values())
    return totals


def measure_matmul_peak(device: torch.device, dtype=torch.float32, n: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of a square matmul in this process, as the MFU denominator."""
    import time

    # Its own generator: drawing from the global RNG would shift dropout after a resume.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
