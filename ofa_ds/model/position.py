"""Deterministic position tables: relative-position buckets and image position ids.

These are pure functions of a few sizes, always built on the CPU (also under a meta-device
context, since the cached tables are shared). The model keeps them as non-persistent buffers;
checkpoint code writes them out for fairseq compatibility and checks them when present.
"""
from __future__ import annotations

import functools
import math

import torch

# Upstream computes the token buckets with max_position fixed at 1024, whatever the args.
TOKEN_BUCKET_MAX_POSITION = 1024
# Length of the tail that pads the decoder's image-code position index, and its fill id.
CODE_POSITION_TAIL, CODE_POSITION_FILL = 769, 1024


@functools.lru_cache(maxsize=4)
def token_bucket_table(bucket_size: int, max_position: int = TOKEN_BUCKET_MAX_POSITION) -> torch.Tensor:
    """[max_position, max_position] int64 index into a (2*bucket_size - 1)-row table.

    Relative distance ``rel = query - key`` maps to itself within ±bucket_size/2 and to
    log-spaced buckets beyond. The log branch is evaluated in float32, as upstream does,
    so that ceil() lands on the same integers.
    """
    pos = torch.arange(max_position, device="cpu")
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    sign = torch.sign(rel)
    abs_rel = torch.where(rel.abs() <= mid, torch.full_like(rel, mid - 1), rel.abs())
    log_pos = (
        torch.ceil(torch.log(abs_rel.float() / mid) / math.log((max_position - 1) / mid) * (mid - 1))
        + mid
    )
    bucket = torch.where(rel.abs() <= mid, rel, (log_pos * sign).long())
    return (bucket + bucket_size - 1).contiguous()


@functools.lru_cache(maxsize=4)
def image_bucket_table(bucket_size: int) -> torch.Tensor:
    """[g*g+1, g*g+1] int64 index into a ((2g-1)^2 + 3)-row table, g = bucket_size.

    Id 0 is a special slot (the BOS of an image-code sequence); ids 1.. are grid cells
    (r, c) -> 1 + r*g + c.
    """
    g = bucket_size
    r, c = torch.meshgrid(torch.arange(g, device="cpu"), torch.arange(g, device="cpu"), indexing="ij")
    r, c = r.flatten(), c.flatten()
    cells = (r[:, None] - r[None, :] + g - 1) * (2 * g - 1) + (c[:, None] - c[None, :] + g - 1)
    n_rel = (2 * g - 1) ** 2
    table = torch.empty(g * g + 1, g * g + 1, dtype=torch.long, device="cpu")
    table[1:, 1:] = cells
    table[0, :] = n_rel  # query is the special slot
    table[1:, 0] = n_rel + 1  # key is the special slot
    table[0, 0] = n_rel + 2
    return table


def image_position_ids(h: int, w: int, bucket_size: int) -> torch.Tensor:
    """[h*w] ids of a row-major h x w patch grid placed in the top-left of the virtual grid."""
    if h > bucket_size or w > bucket_size:
        raise ValueError(
            f"image patch grid {h}x{w} exceeds the {bucket_size}x{bucket_size} position grid; "
            f"use images of at most {bucket_size * 16} px"
        )
    r, c = torch.meshgrid(torch.arange(h, device="cpu"), torch.arange(w, device="cpu"), indexing="ij")
    return (1 + r * bucket_size + c).flatten()


def code_position_index(code_image_size: int, bucket_size: int,
                        tail: int = CODE_POSITION_TAIL) -> torch.Tensor:
    """Image position id of each decoder step of an image-code sequence.

    Step 0 (BOS) -> special id 0; steps 1..g*g -> the g x g code grid; later steps -> a
    fixed filler id. ``tail`` is 769 in fairseq checkpoints and 768 in the HF port.
    """
    g = code_image_size // 8
    grid = image_position_ids(g, g, bucket_size)
    return torch.cat([torch.zeros(1, dtype=torch.long, device="cpu"), grid,
                      torch.full((tail,), CODE_POSITION_FILL, dtype=torch.long, device="cpu")])
