"""The convolutional encoder and decoder of taming-transformers' VQ-GAN, single-device.

Attribute names (``conv_in``, ``down[i].block[j].norm1``, ``mid.attn_1.q``, ``up[i].upsample.conv``,
...) are the published checkpoints' ``state_dict`` keys, so a taming-transformers checkpoint
loads without renaming. Shapes: ``x_BCHW`` images, ``z_BCHW`` latents at 1/f resolution,
f = 2 ** (len(ch_mult) - 1).

Differences from the original that do not change the weights or the function: there is no
timestep embedding (the VQ-GAN never uses it) and attention runs through
``scaled_dot_product_attention`` (the same softmax(q k^T / sqrt(C)) v over the H·W positions).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _conv3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus a 1×1 shortcut when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = _conv3(c_in, c_out)
        self.norm2 = _group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(c_out, c_out)
        # Checkpoint name of the 1x1 projection; absent when shapes already match.
        self.nin_shortcut = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x_BCHW) if self.nin_shortcut is not None else x_BCHW
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions, with 1×1 convs as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x_BCHW.shape
        n = self.norm(x_BCHW)

        def tokens(conv):  # [B, C, H, W] -> [B, 1, H*W, C]
            return conv(n).reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x_BCHW + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding only right and bottom (the original's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels, stride=2, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: resnet blocks, optional attention after each,
    optional resampling (checkpoint keys ``block``, ``attn``, ``downsample``/``upsample``)."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] in [-1, 1] → latent [B, z_channels, H/f, W/f]."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, in_channels: int = 3,
                 z_channels: int = 256, double_z: bool = False, dropout: float = 0.0):
        super().__init__()
        self.conv_in = _conv3(in_channels, ch)
        self.down = nn.ModuleList()
        res, c_in = resolution, ch
        for level, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
            attn = [AttnBlock(c_in) for _ in blocks] if res in attn_resolutions else []
            stage = _Level(blocks, attn)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(c_in)
                res //= 2
            self.down.append(stage)
        self.mid = _Middle(c_in, dropout)
        self.norm_out = _group_norm(c_in)
        self.conv_out = _conv3(c_in, 2 * z_channels if double_z else z_channels)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for stage in self.down:
            h = stage.run(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] → image [B, out_ch, h·f, w·f] (unclamped, about [-1, 1])."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, out_ch: int = 3,
                 z_channels: int = 256, dropout: float = 0.0):
        super().__init__()
        c_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = _conv3(z_channels, c_in)
        self.mid = _Middle(c_in, dropout)
        levels: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[level]
            blocks = []
            for _ in range(num_res_blocks + 1):  # one block more than the encoder, as upstream
                blocks.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
            attn = [AttnBlock(c_in) for _ in blocks] if res in attn_resolutions else []
            stage = _Level(blocks, attn)
            if level != 0:
                stage.upsample = Upsample(c_in)
                res *= 2
            levels.insert(0, stage)  # checkpoint index = resolution level, run from the deepest
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(c_in)
        self.conv_out = _conv3(c_in, out_ch)

    def forward(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCHW))
        for stage in reversed(self.up):
            h = stage.run(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
