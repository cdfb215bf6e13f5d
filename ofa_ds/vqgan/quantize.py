"""The two codebook heads of taming-transformers' VQ-GANs, inference only.

* :class:`GumbelQuantizer` (``quantize.proj``, ``quantize.embed``): a 1×1 conv scores every code
  at each latent position; the code is the best-scoring one. Upstream *samples* a Gumbel-softmax
  even in eval mode, so its codes change from run to run; here encoding takes the noise-free
  argmax (the mode of that distribution), which is deterministic.
* :class:`VectorQuantizer` (``quantize.embedding``): the nearest codebook vector in L2.

Both map codes back to latents with ``lookup`` (codes [B, h, w] → latents [B, D, h, w]).
"""
from __future__ import annotations

import torch
from torch import nn


class GumbelQuantizer(nn.Module):
    def __init__(self, in_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed = n_embed
        self.proj = nn.Conv2d(in_channels, n_embed, kernel_size=1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def codes(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        return self.proj(z_BCHW).argmax(dim=1)

    def lookup(self, codes_BHW: torch.Tensor) -> torch.Tensor:
        return self.embed(codes_BHW).permute(0, 3, 1, 2)


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed = n_embed
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z_BCHW.shape
        z_ND = z_BCHW.permute(0, 2, 3, 1).reshape(-1, c)
        e_KD = self.embedding.weight
        # |z - e|^2 without the |z|^2 term, which is the same for every code of a position.
        dist_NK = e_KD.pow(2).sum(1)[None, :] - 2 * z_ND @ e_KD.t()
        return dist_NK.argmin(dim=1).reshape(b, h, w)

    def lookup(self, codes_BHW: torch.Tensor) -> torch.Tensor:
        return self.embedding(codes_BHW).permute(0, 3, 1, 2)
