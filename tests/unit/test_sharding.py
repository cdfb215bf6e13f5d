"""EpochOrder / ShardCursor: every row once per epoch over ranks x workers, seeded, resumable."""
from __future__ import annotations

import itertools

import pytest
import torch

from ofa_ds.data.sharding import EpochOrder, ShardCursor


def _all_shards(order, epoch, world_size, num_workers, block=1):
    return [list(order.shard(epoch, r, world_size, w, num_workers, block=block))
            for r in range(world_size) for w in range(max(num_workers, 1))]


@pytest.mark.parametrize("num_rows", [0, 1, 7, 24, 101])
@pytest.mark.parametrize("world_size,num_workers", list(itertools.product([1, 2, 3, 4], [0, 1, 2])))
def test_every_row_exactly_once_per_epoch(num_rows, world_size, num_workers):
    order = EpochOrder(num_rows, seed=3)
    for epoch in (0, 1):
        for block in (1, 4):
            shards = _all_shards(order, epoch, world_size, num_workers, block)
            assert sorted(itertools.chain(*shards)) == list(range(num_rows))
        counts = [order.rows_per_rank(r, world_size) for r in range(world_size)]
        assert sum(counts) == num_rows and max(counts) - min(counts) <= (num_rows % world_size > 0)
        assert counts == [len(order.rank_rows(epoch, r, world_size)) for r in range(world_size)]


@pytest.mark.parametrize("num_rows,world_size", [(10, 4), (3, 4), (1, 3), (12, 4)])
def test_even_ranks_pads_by_wrapping(num_rows, world_size):
    order = EpochOrder(num_rows, seed=0, even_ranks=True)
    per_rank = -(-num_rows // world_size)
    streams = [order.rank_rows(5, r, world_size).tolist() for r in range(world_size)]
    assert all(len(s) == per_rank == order.rows_per_rank(r, world_size) for r, s in enumerate(streams))
    flat = list(itertools.chain(*streams))
    assert set(flat) == set(range(num_rows))  # nothing lost
    assert len(flat) - num_rows == per_rank * world_size - num_rows  # the re-reads, < world_size
    # The wrapped rows are the head of the epoch's permutation.
    perm = order.permutation(5).tolist()
    assert sorted(flat) == sorted(perm + [perm[i % num_rows] for i in range(len(flat) - num_rows)])


def test_permutation_seeded_per_epoch():
    order = EpochOrder(1000, seed=7)
    p0, p1 = order.permutation(0), order.permutation(1)
    assert sorted(p0.tolist()) == list(range(1000))
    assert not torch.equal(p0, p1)
    assert torch.equal(EpochOrder(1000, seed=7).permutation(1), p1)  # reproducible
    assert not torch.equal(EpochOrder(1000, seed=8).permutation(1), p1)
    # (seed, epoch) is hashed, not added: (1, 0) and (0, 1) differ.
    assert not torch.equal(EpochOrder(1000, seed=1).permutation(0), EpochOrder(1000, seed=0).permutation(1))
    assert EpochOrder(5, seed=7, shuffle=False).permutation(3).tolist() == [0, 1, 2, 3, 4]


def test_worker_blocks_round_robin_give_the_rank_stream_in_order():
    # What a DataLoader does with block = batch size: worker 0's batch, worker 1's, worker 0's, ...
    order = EpochOrder(50, seed=1)
    rank_stream = order.rank_rows(0, 1, 3).tolist()
    workers = [list(order.shard(0, 1, 3, w, 2, block=4)) for w in range(2)]
    batches = [[ws[i:i + 4] for i in range(0, len(ws), 4)] for ws in workers]
    merged = [row for pair in itertools.zip_longest(*batches, fillvalue=[]) for b in pair for row in b]
    assert merged == rank_stream


def test_shard_argument_checks():
    order = EpochOrder(10, seed=0)
    for kwargs in (dict(rank=2, world_size=2), dict(rank=0, world_size=0),
                   dict(rank=0, world_size=1, worker_id=1, num_workers=0),
                   dict(rank=0, world_size=1, block=0), dict(rank=0, world_size=1, start=11)):
        with pytest.raises(ValueError):
            list(order.shard(0, **kwargs))
    with pytest.raises(ValueError):
        EpochOrder(-1, seed=0)


@pytest.mark.parametrize("world_size,rank", [(1, 0), (3, 2)])
def test_cursor_resume_mid_epoch(world_size, rank):
    order = EpochOrder(23, seed=11)
    cursor = ShardCursor(order, rank, world_size)
    per_epoch = order.rows_per_rank(rank, world_size)
    reference = [next(cursor) for _ in range(3 * per_epoch)]  # crosses two epoch boundaries
    assert reference[:per_epoch] == order.rank_rows(0, rank, world_size).tolist()
    assert reference[per_epoch:2 * per_epoch] == order.rank_rows(1, rank, world_size).tolist()

    for stop in (0, 1, per_epoch - 1, per_epoch, per_epoch + 2):
        first = ShardCursor(EpochOrder(23, seed=11), rank, world_size)
        for _ in range(stop):
            next(first)
        state = first.state_dict()
        assert (state["epoch"], state["position"]) == divmod(stop, per_epoch)
        resumed = ShardCursor(EpochOrder(23, seed=11), rank, world_size)
        resumed.load_state_dict(state)
        assert [next(resumed) for _ in range(len(reference) - stop)] == reference[stop:]


def test_cursor_with_workers_and_advance():
    order = EpochOrder(40, seed=2)
    cursor = ShardCursor(order, rank=1, world_size=2)
    stream = order.rank_rows(0, 1, 2).tolist()
    cursor.advance(8)  # the main process received two batches of 4
    state = cursor.state_dict()

    resumed = ShardCursor(EpochOrder(40, seed=2), rank=1, world_size=2)
    resumed.load_state_dict(state)
    rest = sorted(itertools.chain(*(resumed.remaining(w, 3, block=4) for w in range(3))))
    assert rest == sorted(stream[8:])
    assert list(resumed.remaining()) == stream[8:]
    resumed.advance(len(stream) - 8 + 1)
    assert (resumed.epoch, resumed.position) == (1, 1)
    assert next(resumed) == order.rank_rows(1, 1, 2)[1]


def test_cursor_state_at_epoch_end_continues_in_next_epoch():
    order = EpochOrder(10, seed=0)
    cursor = ShardCursor(order, rank=0, world_size=2)
    cursor.load_state_dict({"epoch": 3, "position": 5})
    assert (cursor.epoch, cursor.position) == (4, 0) and next(cursor) == order.rank_rows(4, 0, 2)[0]


def test_cursor_rejects_mismatched_state():
    cursor = ShardCursor(EpochOrder(10, seed=0), rank=0, world_size=2)
    for key, value in (("num_rows", 11), ("seed", 1), ("world_size", 4), ("position", 6)):
        state = cursor.state_dict() | {key: value}
        with pytest.raises(ValueError, match=key):
            cursor.load_state_dict(state)
    with pytest.raises(ValueError):
        cursor.advance(-1)
    with pytest.raises(StopIteration):
        next(ShardCursor(EpochOrder(0, seed=0)))
