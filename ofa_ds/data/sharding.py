"""Deterministic per-epoch row order, split over ranks and DataLoader workers (spec §8).

Upstream OFA reads each rank's contiguous block sequentially and relies on pre-shuffled copies of
the TSV, one per epoch (spec §2.1). Here the order is a pure function of (seed, epoch):

1. ``permutation(epoch)``: a seeded permutation of all row indices (identity if not shuffling).
2. Rank ``r`` of ``W`` takes every W-th entry of it, starting at ``r``: its *rank stream*.
3. A rank's DataLoader workers split the rank stream into blocks of ``block`` rows and deal
   them round-robin: worker ``w`` of ``K`` takes blocks ``w, w+K, ...``. With ``block`` equal to
   the batch size, DataLoader's in-order round-robin over workers delivers the rank stream in
   order, so the rows consumed are always a prefix of it and one integer resumes exactly.

**Uneven row counts.** By default every row is read exactly once per epoch: when ``W`` does not
divide ``num_rows``, the first ``num_rows % W`` ranks get one row more than the others (counts
differ by at most one; nothing is dropped or repeated). Training loops that need equal per-rank
counts pass ``even_ranks=True``: the permutation is then extended by wrapping around to its
start, so every rank gets ``ceil(num_rows / W)`` rows and at most ``W - 1`` rows are read twice
in that epoch. Workers of one rank may always differ by up to one block.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch


def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than seed + epoch, so (seed=1, epoch=0) and (seed=0, epoch=1) differ.
    digest = hashlib.blake2b(f"ofa_ds.epoch_order:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class EpochOrder:
    """Seeded per-epoch order of ``num_rows`` rows, sharded by (rank, worker). See module doc."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True, even_ranks: bool = False):
        if num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {num_rows}")
        self.num_rows = int(num_rows)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.even_ranks = even_ranks
        self._cached: tuple[int, torch.Tensor] | None = None  # the last epoch's permutation

    def permutation(self, epoch: int) -> torch.LongTensor:
        """All row indices in epoch ``epoch``'s order; the same for a given (seed, epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            perm = torch.randperm(self.num_rows, generator=g)
        else:
            perm = torch.arange(self.num_rows)
        self._cached = (epoch, perm)
        return perm

    def rows_per_rank(self, rank: int, world_size: int) -> int:
        """Length of ``rank``'s stream in every epoch."""
        _check_rank(rank, world_size)
        if self.even_ranks:
            return -(-self.num_rows // world_size)
        return max(0, -(-(self.num_rows - rank) // world_size))

    def rank_rows(self, epoch: int, rank: int, world_size: int) -> torch.LongTensor:
        """``rank``'s stream for ``epoch``: the row indices it reads, in order."""
        _check_rank(rank, world_size)
        perm = self.permutation(epoch)
        if self.even_ranks and self.num_rows:
            total = self.rows_per_rank(rank, world_size) * world_size
            perm = perm[torch.arange(total) % self.num_rows]  # wrap to the start: re-reads
        return perm[rank::world_size]

    def shard(self, epoch: int, rank: int, world_size: int, worker_id: int = 0,
              num_workers: int = 0, *, start: int = 0, block: int = 1) -> Iterator[int]:
        """Row indices read by one (rank, worker) in ``epoch``.

        ``num_workers=0`` means in-process loading (one reader per rank). ``start`` skips the
        first ``start`` rows of the rank stream (already consumed, for resume); blocks are
        counted from there. ``block`` is the number of consecutive rows a worker takes at a
        time; use the DataLoader batch size.
        """
        n_readers = max(num_workers, 1)
        if num_workers < 0 or not 0 <= worker_id < n_readers:
            raise ValueError(f"need 0 <= worker_id < max(num_workers, 1), got worker_id={worker_id}, "
                             f"num_workers={num_workers}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        rows = self.rank_rows(epoch, rank, world_size)
        if not 0 <= start <= len(rows):
            raise ValueError(f"start={start} outside [0, {len(rows)}] for rank {rank}")
        rows = rows[start:]
        mine = (torch.arange(len(rows)) // block) % n_readers == worker_id
        return iter(rows[mine].tolist())


class ShardCursor:
    """One rank's place in its row stream: the epoch and the rows consumed in it.

    Two ways to use it:

    * in-process: ``next(cursor)`` returns the next row index and advances, rolling over into
      the next epoch at the end (an endless stream, e.g. for the pure-data streams that cycle);
    * with DataLoader workers: each worker iterates ``cursor.remaining(worker_id, num_workers,
      block=batch_size)``, and the main process calls ``cursor.advance(n)`` for every ``n`` rows
      it receives, so the cursor always names the next row to deliver.

    ``state_dict()`` / ``load_state_dict()`` restore that exact point.
    """

    def __init__(self, order: EpochOrder, rank: int = 0, world_size: int = 1, epoch: int = 0):
        _check_rank(rank, world_size)
        self.order = order
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.position = 0

    @property
    def rows_per_epoch(self) -> int:
        return self.order.rows_per_rank(self.rank, self.world_size)

    def remaining(self, worker_id: int = 0, num_workers: int = 0, block: int = 1) -> Iterator[int]:
        """The rest of the current epoch's rank stream for one worker (does not advance)."""
        return self.order.shard(self.epoch, self.rank, self.world_size, worker_id, num_workers,
                                start=self.position, block=block)

    def advance(self, n: int) -> None:
        """Mark ``n`` more rows consumed; past the epoch's end, continue into the next epoch."""
        if n < 0:
            raise ValueError(f"cannot advance by {n} rows")
        per_epoch = self.rows_per_epoch
        self.position += n
        while per_epoch and self.position >= per_epoch:
            self.position -= per_epoch
            self.epoch += 1

    def __iter__(self) -> "ShardCursor":
        return self

    def __next__(self) -> int:
        rows = self.order.rank_rows(self.epoch, self.rank, self.world_size)
        if len(rows) == 0:
            raise StopIteration  # this rank has no rows at all
        idx = int(rows[self.position])
        self.advance(1)
        return idx

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            # Recorded so a resume with different data or layout fails loudly instead of drifting.
            "num_rows": self.order.num_rows,
            "seed": self.order.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, ours in (("num_rows", self.order.num_rows), ("seed", self.order.seed),
                          ("world_size", self.world_size)):
            if key in state and state[key] != ours:
                raise ValueError(f"cannot resume the row order: checkpoint has {key}={state[key]}, "
                                 f"this run has {key}={ours}")
        if not 0 <= state["position"] <= self.rows_per_epoch:
            raise ValueError(f"position {state['position']} outside this rank's "
                             f"{self.rows_per_epoch} rows per epoch")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.advance(0)  # a position at the epoch's end means the next epoch's start
