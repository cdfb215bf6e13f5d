"""Finetuning samples, their collate, and the resumable training loader every head shares.

A :class:`TaskSample` is the pretraining :class:`Sample` plus what answer-set heads need
(spec §2.4): ``constraint_rows`` (per target position, the allowed ids; ``None`` = all
allowed, ``[]`` = none), ``decoder_prompt`` (the decoder prefix of all-candidate scoring and
the forced prefix of beam search) and ``ref`` (the reference the task scores against, e.g.
VQA's ``{answer: confidence}``). Text-only tasks set ``patch_image=None``.

:func:`collate_task` adds to the generic batch: ``constraint_masks`` [B, T, V] bool (padded
positions all True, as OFA's collate pads masks with 1), ``decoder_prompts`` (list of
LongTensors), ``prefix_tokens`` [B, P] (decoder prompt without bos, right-padded) and
``refs`` (list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ofa_ds.data.bad_rows import BadRow, BadRowPolicy, NoGoodRows
from ofa_ds.data.collate import collate
from ofa_ds.data.sharding import EpochOrder, ShardCursor
from ofa_ds.data.streams.common import Sample


@dataclass
class TaskSample(Sample):
    constraint_rows: list | None = None
    decoder_prompt: torch.Tensor | None = None
    ref: Any = None
    extra: dict = field(default_factory=dict)
    """Task-specific values kept per row (e.g. resize ratios); gathered as ``batch['extra']``."""


def constraint_masks(samples: Sequence[TaskSample], T: int, vocab_size: int) -> torch.Tensor | None:
    """Dense [B, T, V] bool masks from the samples' ``constraint_rows`` (None: no sample has any)."""
    if all(s.constraint_rows is None for s in samples):
        return None
    masks = torch.ones(len(samples), T, vocab_size, dtype=torch.bool)
    for b, s in enumerate(samples):
        for t, allowed in enumerate(s.constraint_rows or []):
            if allowed is None:
                continue
            masks[b, t] = False
            masks[b, t, list(allowed)] = True
    return masks


def collate_task(samples: Sequence[TaskSample], *, pad: int, vocab_size: int) -> dict:
    batch = collate(samples, pad=pad)
    T = batch["target"].shape[1]
    masks = constraint_masks(samples, T, vocab_size)
    if masks is not None:
        batch["constraint_masks"] = masks
    if samples[0].decoder_prompt is not None:
        prompts = [s.decoder_prompt for s in samples]
        batch["decoder_prompts"] = prompts
        P = max(len(p) - 1 for p in prompts)
        prefix = torch.full((len(samples), max(P, 1)), pad, dtype=torch.long)
        for b, p in enumerate(prompts):
            prefix[b, :len(p) - 1] = p[1:]
        batch["prefix_tokens"] = prefix
    batch["refs"] = [s.ref for s in samples]
    batch["extra"] = [s.extra for s in samples]
    return batch


class SampleLoader:
    """Micro-batches of this rank's shard of one split, in a seeded per-epoch order; resumable.

    Samples are built in the training process (finetuning rows are cheap); bad rows are
    skipped, counted and named by the policy, and the batch is filled from the next rows.
    """

    def __init__(self, n_rows: int, build: Callable[[int], TaskSample], *, collate_fn, batch_size: int,
                 rank: int, world_size: int, seed: int, policy: BadRowPolicy, path: str = ""):
        if n_rows == 0:
            raise ValueError(f"{path}: the training split has no rows")
        self.build, self.collate_fn, self.batch_size, self.policy = build, collate_fn, batch_size, policy
        self.path = path
        self.on_batch = None
        """Called before each batch is built (a task that seeds augmentation by epoch reads the cursor)."""
        self.cursor = ShardCursor(EpochOrder(n_rows, seed), rank=rank, world_size=world_size)

    def __len__(self) -> int:
        return max(1, self.cursor.rows_per_epoch // self.batch_size)

    def __iter__(self):
        for _ in range(len(self)):
            samples, tried = [], 0
            if self.on_batch is not None:
                self.on_batch()
            while len(samples) < self.batch_size:
                i = next(self.cursor)
                tried += 1
                try:
                    samples.append(self.build(i))
                except BadRow as err:
                    self.policy.set_epoch(self.cursor.epoch)  # a bad row counts once per epoch
                    self.policy.record(err)
                    if tried > 4 * self.cursor.rows_per_epoch + self.batch_size and not samples:
                        raise NoGoodRows(f"{self.path}: no usable row found (every row was bad); first bad row "
                                         f"of each reason: {self.policy.first(err.file)}") from err
            yield self.collate_fn(samples)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor.state_dict(), "bad_rows": self.policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.policy.load_state_dict(state["bad_rows"])
