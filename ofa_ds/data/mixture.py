"""The pretraining mixture: which rows every micro-batch reads, and a resumable loader.

**Composition.** ``weights`` maps stream name -> share of *samples* (big_vision style). The
default ``{"vision_language": 16, "text": 2, "image": 1, "detection": 1}`` is OFA's: per 8 VL
rows (16 VL samples, each row giving two) one "extras set" of 2 text-infilling, 1
image-infilling and 1 detection sample (spec §3.8). A micro-batch of B VL rows therefore holds
``2·B·w_s / w_vl`` samples of each extra stream. Those counts must be whole numbers and B a
multiple of 8, so that **every micro-batch on every rank has the same structure** (the same
groups, the same streams, so the same modules run: ZeRO-3 hangs when ranks differ).

**Plan.** What a micro-batch reads is a pure function of (weights, seed, epoch, batch index,
rank, world size) -- :meth:`MixturePlan.batch`. Nothing depends on loader workers or on what
was read before, so a position (epoch, batch index) restores the exact next batch.

* VL rows: ``EpochOrder`` (``sharding.py``) permutes all rows per (seed, epoch); rank r of W
  takes every W-th row, and batch i of a rank takes the next B of them. Every VL row is read
  exactly once per epoch. Ranks whose share is short by a few rows get a smaller (or, in the
  extreme, an empty) last VL group; an empty group gets one zero-weight placeholder sample
  (conf 0, OFA's "dummy batch with loss x 0") so the step still runs the same modules.
* Extra streams cycle on their own, independent of VL epochs (spec §3.8): the rank's n-th
  sample of stream s is global event ``e = n·W + r`` of that stream, which reads row
  ``perm_c[e mod len]`` of cycle ``c = e // len``, ``perm_c`` a seeded permutation per cycle.
* Augmentation randomness per sample comes from (seed, stream, epoch or cycle, row)
  (``streams.sample_rng``), so a VL row looks the same whatever the world size.

**Loader workers** build whole batches: worker w of K builds batches i ≡ w (mod K) of the
rank's epoch, and DataLoader's in-order round robin hands them back as i = 0, 1, 2, ...

**Bad rows** never change the plan. A bad VL row's two samples are left out of its batch; a
bad extra row is replaced by the next row of that stream's cycle, so the extras group keeps
its size. Every bad row travels with its batch to the main process, where the
``BadRowPolicy`` counts and warns (or raises, in strict mode) and prints an epoch summary.
A stream with no good row is fatal (:class:`NoGoodRows`, naming the file and the first bad row
of each reason): an extra stream as soon as a whole cycle of it failed, the VL input at the
end of an epoch in which none of this rank's VL rows was usable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ofa_ds.data.bad_rows import BadRow, BadRowPolicy, NoGoodRows, first_of_each_reason
from ofa_ds.data.collate import collate
from ofa_ds.data.sharding import EpochOrder
from ofa_ds.data.streams.common import STREAM_IDS, Sample, sample_rng

logger = logging.getLogger("ofa_ds.data")

VL = "vision_language"
EXTRA_STREAMS = ("text", "image", "detection")
DEFAULT_WEIGHTS = {VL: 16.0, "text": 2.0, "image": 1.0, "detection": 1.0}
SAMPLES_PER_VL_ROW = 2
VL_ROWS_MULTIPLE = 8  # OFA's cadence: one extras set per 8 VL rows
PLACEHOLDER_ID = "<placeholder>"


def extras_per_batch(weights: Mapping[str, float], vl_rows_per_batch: int) -> dict[str, int]:
    """Samples of each extra stream in a micro-batch of ``vl_rows_per_batch`` VL rows.

    Streams with weight 0 are left out. Raises ValueError for unknown streams, a missing or
    non-positive VL weight, a batch size that is not a multiple of 8, or weights that do not
    give whole sample counts per batch.
    """
    unknown = set(weights) - {VL, *EXTRA_STREAMS}
    if unknown:
        raise ValueError(f"unknown streams in weights: {sorted(unknown)}; known: {[VL, *EXTRA_STREAMS]}")
    if weights.get(VL, 0) <= 0:
        raise ValueError(f"the {VL!r} weight must be > 0: VL rows define the epoch, got {dict(weights)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0, got {dict(weights)}")
    if vl_rows_per_batch <= 0 or vl_rows_per_batch % VL_ROWS_MULTIPLE:
        raise ValueError(f"the per-rank micro-batch must be a positive multiple of {VL_ROWS_MULTIPLE} VL rows "
                         f"(OFA adds one extras set per {VL_ROWS_MULTIPLE} rows, and every micro-batch must "
                         f"have the same structure); got {vl_rows_per_batch}")
    counts = {}
    for name in EXTRA_STREAMS:
        exact = SAMPLES_PER_VL_ROW * vl_rows_per_batch * weights.get(name, 0.0) / weights[VL]
        count = round(exact)
        if abs(exact - count) > 1e-6:
            raise ValueError(f"weight {weights[name]} for {name!r} gives {exact:.3f} samples per micro-batch of "
                             f"{vl_rows_per_batch} VL rows; choose weights (or a batch size) that give whole numbers")
        if count:
            counts[name] = count
    return counts


@dataclass(frozen=True)
class BatchPlan:
    """The rows one micro-batch reads. ``extras`` items are ``(stream, event)``; see
    :meth:`MixturePlan.locate` for the row an event reads."""

    epoch: int
    index: int
    vl_rows: tuple[int, ...]
    extras: tuple[tuple[str, int], ...]


class MixturePlan:
    """Pure mapping (epoch, batch index) -> :class:`BatchPlan` for one rank (module doc)."""

    def __init__(self, num_rows: Mapping[str, int], *, vl_rows_per_batch: int, seed: int = 7,
                 rank: int = 0, world_size: int = 1, weights: Mapping[str, float] = DEFAULT_WEIGHTS):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.counts = extras_per_batch(weights, vl_rows_per_batch)
        if num_rows.get(VL, 0) <= 0:
            raise ValueError("the vision-language stream has no rows")
        empty = [name for name in self.counts if num_rows.get(name, 0) <= 0]
        if empty:
            raise ValueError(f"streams {empty} have weight > 0 but no rows (set their weight to 0 or give a file)")
        self.num_rows = dict(num_rows)
        self.weights = dict(weights)
        self.vl_rows_per_batch, self.seed = vl_rows_per_batch, seed
        self.rank, self.world_size = rank, world_size
        self.order = EpochOrder(num_rows[VL], seed)
        # The rank with the most rows sets the count, so every rank runs as many batches.
        self.batches_per_epoch = -(-self.order.rows_per_rank(0, world_size) // vl_rows_per_batch)
        self._perm_cache: dict[str, tuple[int, np.ndarray]] = {}

    def describe(self) -> str:
        total = sum(self.weights.get(n, 0) for n in (VL, *self.counts))
        shares = ", ".join(f"{n} {self.weights[n] / total:.1%}" for n in (VL, *self.counts))
        per_batch = ", ".join(f"{c} {n}" for n, c in self.counts.items()) or "no extras"
        return (f"mixture {shares}; per micro-batch: {self.vl_rows_per_batch} VL rows "
                f"({SAMPLES_PER_VL_ROW * self.vl_rows_per_batch} samples) + {per_batch}; "
                f"{self.batches_per_epoch} micro-batches per epoch on each of {self.world_size} ranks")

    def batch(self, epoch: int, index: int) -> BatchPlan:
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(f"batch {index} outside [0, {self.batches_per_epoch}) of epoch {epoch}")
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        B = self.vl_rows_per_batch
        vl_rows = self.order.rank_rows(epoch, self.rank, self.world_size)[index * B:(index + 1) * B]
        step = (epoch - 1) * self.batches_per_epoch + index  # micro-batches this rank ran before
        extras = tuple((name, (step * count + j) * self.world_size + self.rank)
                       for name, count in self.counts.items() for j in range(count))
        return BatchPlan(epoch, index, tuple(vl_rows.tolist()), extras)

    def locate(self, stream: str, event: int) -> tuple[int, int]:
        """(cycle, row) read by global event ``event`` of an extra stream."""
        n = self.num_rows[stream]
        cycle = event // n
        cached = self._perm_cache.get(stream)
        if cached is None or cached[0] != cycle:
            perm = np.random.default_rng([self.seed, STREAM_IDS[stream], cycle]).permutation(n)
            cached = self._perm_cache[stream] = (cycle, perm)
        return cycle, int(cached[1][event % n])


class BatchBuilder:
    """Turns a :class:`BatchPlan` into ``(vl_batch, extras_batch, bad_rows)``."""

    def __init__(self, plan: MixturePlan, streams: Mapping[str, object], *, pad: int, bos: int, eos: int,
                 vl_image_size: int, sample_patch_num: int | None = None, strict: bool = False):
        missing = [n for n in (VL, *plan.counts) if n not in streams]
        if missing:
            raise ValueError(f"no stream given for {missing}")
        self.plan, self.streams = plan, dict(streams)
        self.pad, self.bos, self.eos = pad, bos, eos
        self.vl_image_size, self.sample_patch_num, self.strict = vl_image_size, sample_patch_num, strict

    def _placeholder(self) -> Sample:
        # Zero-weight stand-in for an all-bad or empty VL group: same keys and modules, no loss.
        return Sample(PLACEHOLDER_ID, torch.tensor([self.bos, self.eos]), torch.tensor([self.eos]),
                      torch.tensor([self.bos]), torch.zeros(3, self.vl_image_size, self.vl_image_size),
                      patch_mask=False, code_mask=None, conf=0.0)

    def build(self, bp: BatchPlan):
        bad: list[BadRow] = []
        vl: list[Sample] = []
        for row in bp.vl_rows:
            try:
                vl += self.streams[VL].samples(row, sample_rng(self.plan.seed, VL, bp.epoch, row))
            except BadRow as err:
                if self.strict:  # stop here; the main process raises it
                    return None, None, [err]
                bad.append(err)
        extras: list[Sample] = []
        for name, event in bp.extras:
            got = self._extra(name, event, bad)
            if got is None:
                return None, None, bad
            extras += got
        vl_batch = collate(vl or [self._placeholder()], self.pad)
        extras_batch = collate(extras, self.pad) if extras else None
        if extras_batch is not None and self.sample_patch_num is not None:
            # OFA samples patches of the VL group only, and only in pair mode (spec §3.8).
            vl_batch["net_input"]["sample_patch_num"] = self.sample_patch_num
        return vl_batch, extras_batch, bad

    def _extra(self, name: str, event: int, bad: list[BadRow]) -> list[Sample] | None:
        stream = self.streams[name]
        for attempt in range(self.plan.num_rows[name]):
            cycle, row = self.plan.locate(name, event + attempt)
            try:
                return stream.samples(row, sample_rng(self.plan.seed, name, cycle, row))
            except BadRow as err:
                bad.append(err)
                if self.strict:
                    return None
        # Raised where the batch is built (maybe a worker, whose bad rows never reach the main
        # process's log), so the message itself carries the first bad row of each reason.
        path = str(stream.tsv.path)
        raise NoGoodRows(f"{path}: every row of the {name} stream is bad ({self.plan.num_rows[name]} rows read); "
                         f"first bad row of each reason: {first_of_each_reason(e for e in bad if e.file == path)}")


class _EpochBatches(IterableDataset):
    """Batches ``start..`` of one epoch; DataLoader worker w of K builds i ≡ start + w (mod K)."""

    def __init__(self, builder: BatchBuilder, epoch: int, start: int):
        self.builder, self.epoch, self.start = builder, epoch, start

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(self.start + worker, self.builder.plan.batches_per_epoch, workers):
            yield self.builder.build(self.builder.plan.batch(self.epoch, index))


def _as_is(batch):
    return batch


class MixtureLoader:
    """Iterates ``(vl_batch, extras_batch)`` micro-batches, one epoch per ``iter()``.

    ``extras_batch`` is None only for a mix without extra streams. ``state_dict()`` taken at any
    point restores the exact next micro-batch, whatever ``num_workers`` is before or after.
    ``extras_loss_weight`` is for the task: OFA's pair loss is loss₁/n₁ + w·loss₂/n₂ with w = 1.
    """

    def __init__(self, builder: BatchBuilder, *, num_workers: int = 0, policy: BadRowPolicy | None = None,
                 pin_memory: bool = False, extras_loss_weight: float = 1.0, epoch: int = 1):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.builder, self.plan = builder, builder.plan
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.policy = policy if policy is not None else BadRowPolicy(strict=builder.strict)
        self.extras_loss_weight = extras_loss_weight
        self.epoch, self.batch_index = epoch, 0
        self.vl_good_samples: int | None = 0  # this epoch's; None: unknown (resumed from an old state)

    def __len__(self) -> int:
        """Micro-batches per epoch (the same on every rank)."""
        return self.plan.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch`` (no-op if already in it)."""
        if epoch != self.epoch:
            self.epoch, self.batch_index, self.vl_good_samples = epoch, 0, 0

    def _batches(self) -> Iterator:
        dataset = _EpochBatches(self.builder, self.epoch, self.batch_index)
        if self.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                               collate_fn=_as_is, pin_memory=self.pin_memory))

    def __iter__(self):
        if self.batch_index >= len(self):
            self._end_epoch()
        self.policy.set_epoch(self.epoch)
        for vl_batch, extras_batch, bad in self._batches():
            for err in bad:
                self.policy.record(err)  # strict: raises here, on the first bad row
            if self.vl_good_samples is not None:
                self.vl_good_samples += sum(i != PLACEHOLDER_ID for i in vl_batch["id"])
            self.batch_index += 1
            yield vl_batch, extras_batch
        self._end_epoch()

    def _end_epoch(self) -> None:
        self.policy.log_summary(self.epoch)
        if self.vl_good_samples == 0 and self.plan.order.rows_per_rank(self.plan.rank, self.plan.world_size):
            path = str(self.builder.streams[VL].tsv.path)
            rows = sum(self.policy.summary(self.epoch).get(path, {}).values())
            raise NoGoodRows(f"{path}: no usable vision-language row in epoch {self.epoch} ({rows} bad rows, "
                             f"trained on placeholders only); first bad row of each reason: "
                             f"{self.policy.first(path, self.epoch) or 'none recorded'}")
        self.epoch, self.batch_index, self.vl_good_samples = self.epoch + 1, 0, 0

    # -- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "seed": self.plan.seed,
            "world_size": self.plan.world_size,
            "vl_rows_per_batch": self.plan.vl_rows_per_batch,
            "num_rows": dict(self.plan.num_rows),
            "weights": dict(self.plan.weights),
            "bad_rows": self.policy.state_dict(),
            "vl_good_samples": self.vl_good_samples,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the position. Data (row counts) and seed must match. A different world size
        or batch size resumes at the first batch boundary not after the VL rows already read:
        the rows read are always a prefix of the epoch's permutation, so at most one
        micro-batch's worth of rows is read twice, and extra streams continue from the new
        layout's position."""
        for key, ours in (("seed", self.plan.seed), ("num_rows", self.plan.num_rows)):
            if state[key] != ours:
                raise ValueError(f"cannot resume the data loader: checkpoint has {key}={state[key]}, "
                                 f"this run has {key}={ours}")
        if dict(state["weights"]) != self.plan.weights:
            logger.warning("data weights changed from %s to %s on resume", state["weights"], self.plan.weights)
        index = int(state["batch_index"])
        old_rows = state["world_size"] * state["vl_rows_per_batch"]
        new_rows = self.plan.world_size * self.plan.vl_rows_per_batch
        if old_rows != new_rows:
            consumed = index * old_rows
            index = min(consumed // new_rows, len(self))
            logger.warning("resuming with %d VL rows per step instead of %d: %d rows of epoch %d were "
                           "read, restarting at micro-batch %d (%d rows read again)", new_rows, old_rows,
                           consumed, state["epoch"], index, consumed - index * new_rows)
        self.epoch, self.batch_index = int(state["epoch"]), index
        self.vl_good_samples = state.get("vl_good_samples")
        self.policy.load_state_dict(state["bad_rows"])


def sample_counts(plan: MixturePlan) -> dict[str, int]:
    """Samples per micro-batch per stream (VL counted in samples, 2 per row)."""
    return {VL: SAMPLES_PER_VL_ROW * plan.vl_rows_per_batch, **plan.counts}


__all__ = ["DEFAULT_WEIGHTS", "EXTRA_STREAMS", "VL", "BatchBuilder", "BatchPlan", "MixtureLoader",
           "MixturePlan", "extras_per_batch", "sample_counts"]
