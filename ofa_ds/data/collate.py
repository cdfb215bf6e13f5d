"""Stack samples into OFA's batch dict (spec §2.4).

::

    {
      "id":          np.ndarray [B]          sample ids
      "nsentences":  int                     B
      "ntokens":     int                     non-pad target tokens
      "net_input": {
        "src_tokens":         LongTensor [B, S]     [bos ; source ; eos], right-padded with pad
        "src_lengths":        LongTensor [B]        non-pad source length
        "patch_images":       FloatTensor [B, 3, H, W]
        "patch_masks":        BoolTensor [B]        False: placeholder image, all patches padding
        "code_masks":         BoolTensor [B] | None True: target is image codes; None (VL group)
        "prev_output_tokens": LongTensor [B, T]     [bos ; target tokens], right-padded
      },
      "target":      LongTensor [B, T]       [target tokens ; eos], right-padded
      "conf":        FloatTensor [B]         per-sample loss weight
    }

A pretraining batch is the pair ``(vl_batch, extras_batch)`` of two such dicts (spec §3.8).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ofa_ds.data.streams.common import Sample


def collate(samples: Sequence[Sample], pad: int = 1) -> dict:
    """Right-pad and stack ``samples``; all images must have the same size."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    src_BS = pad_sequence([s.source for s in samples], batch_first=True, padding_value=pad)
    target_BT = pad_sequence([s.target for s in samples], batch_first=True, padding_value=pad)
    prev_BT = pad_sequence([s.prev_output_tokens for s in samples], batch_first=True, padding_value=pad)
    text_only = all(s.patch_image is None for s in samples)  # GLUE-style tasks: no image keys
    sizes = {None if s.patch_image is None else tuple(s.patch_image.shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples of one batch must share the image size, got {sorted(map(str, sizes))}")
    # The VL group carries no code flags (None); the extras group flags every sample.
    code_masks = None if samples[0].code_mask is None else torch.tensor([bool(s.code_mask) for s in samples])
    return {
        "id": np.array([s.id for s in samples]),
        "nsentences": len(samples),
        "ntokens": int(target_BT.ne(pad).sum()),
        "net_input": {
            "src_tokens": src_BS,
            "src_lengths": src_BS.ne(pad).sum(1),
            "patch_images": None if text_only else torch.stack([s.patch_image for s in samples]),
            "patch_masks": None if text_only else torch.tensor([s.patch_mask for s in samples], dtype=torch.bool),
            "code_masks": code_masks,
            "prev_output_tokens": prev_BT,
        },
        "target": target_BT,
        "conf": torch.tensor([s.conf for s in samples], dtype=torch.float32),
    }
