"""Streaming micro-batches from the store: order, shuffling, DDP row split, resume position, prefetch."""

from __future__ import annotations

import numpy as np
import pytest

from daram.errors import DaramError
from daram.pipeline.batches import BatchPlan, Prefetcher, iter_batches
from daram.storage import Store

# A shard layout like the store's: chunks of 16 rows, the last one short.
RANGES = {0: [(0, 16), (16, 32), (32, 40)], 1: [(lo, min(lo + 16, 150)) for lo in range(0, 150, 16)], 2: [(0, 16), (16, 20)]}


def _rows(plan: BatchPlan) -> list[tuple[int, int, int]]:
    """(epoch, shard, row) of every row the plan uses, in order."""
    used = []
    for p in plan.passes:
        used += [(p.epoch, p.shard, int(r)) for r in p.row_order()[: p.batches * plan.batch_size]]
    return used


def test_without_shuffle_rows_come_in_store_order_shard_by_shard():
    plan = BatchPlan(RANGES, [1, 0], epochs=1, batch_size=4, shuffle=False, seed=0)
    rows = _rows(plan)
    assert rows == [(0, 1, r) for r in range(148)] + [(0, 0, r) for r in range(40)]
    assert plan.total_batches == 37 + 10


def test_shuffle_is_seeded_covers_the_shard_and_differs_by_epoch():
    plan = BatchPlan(RANGES, [1], epochs=2, batch_size=1, shuffle=True, seed=3)
    again = BatchPlan(RANGES, [1], epochs=2, batch_size=1, shuffle=True, seed=3)
    other = BatchPlan(RANGES, [1], epochs=2, batch_size=1, shuffle=True, seed=4)
    rows = _rows(plan)
    assert rows == _rows(again) and rows != _rows(other)
    first, second = [r for e, _, r in rows if e == 0], [r for e, _, r in rows if e == 1]
    assert sorted(first) == sorted(second) == list(range(150)) and first != second and first != sorted(first)


def _rank_micro_batches(plan: BatchPlan) -> list[list[tuple[int, int, int]]]:
    """This rank's micro-batches, each as its (epoch, shard, row)s, in order."""
    mine, index = [], 0
    for p in plan.passes:
        order = p.row_order()
        for b in range(p.batches):
            if index < plan.total_batches and index % plan.world == plan.rank:
                mine.append([(p.epoch, p.shard, int(r)) for r in order[b * plan.batch_size : (b + 1) * plan.batch_size]])
            index += 1
    return mine


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_out_one_order_whatever_their_number(world):
    # Elastic resume rests on this: N ranks or M, the micro-batches are the same ones in the same order.
    one = _rank_micro_batches(BatchPlan(RANGES, [0, 1, 2], 1, 3, True, 7))
    plans = [BatchPlan(RANGES, [0, 1, 2], 1, 3, True, 7, rank=r, world=world) for r in range(world)]
    ranks = [_rank_micro_batches(p) for p in plans]
    assert len({len(r) for r in ranks}) == 1 and len({p.total_batches for p in plans}) == 1  # ranks step together
    dealt = [ranks[g % world][g // world] for g in range(plans[0].total_batches)]
    assert dealt == one[: plans[0].total_batches] and len(one) - len(dealt) < world  # only the end is cut
    rows = [{row for batch in r for row in batch} for r in ranks]
    assert all(not (rows[a] & rows[b]) for a in range(world) for b in range(a + 1, world))


def test_describe_gives_epoch_shard_and_row_offset():
    plan = BatchPlan(RANGES, [0, 2], epochs=2, batch_size=4, shuffle=False, seed=0)  # 10 + 5 batches per epoch
    assert plan.describe(0) == {"micro_batches": 0, "epoch": 0, "shard": 0, "row_offset": 0}
    assert plan.describe(12) == {"micro_batches": 12, "epoch": 0, "shard": 2, "row_offset": 8}
    assert plan.describe(16) == {"micro_batches": 16, "epoch": 1, "shard": 0, "row_offset": 4}
    assert plan.describe(30)["shard"] == -1


def test_reading_from_any_position_continues_the_same_stream(prepared_store):
    store = Store.open(str(prepared_store))
    shards = [1, 0]
    plan = BatchPlan({s: store.chunk_ranges(s) for s in shards}, shards, 2, 5, True, 1)
    full = [b.tokens for b in iter_batches(store, plan, 0, with_teacher=False)]
    assert len(full) == plan.total_batches
    tail = [b.tokens for b in iter_batches(store, plan, 9, with_teacher=False)]
    assert len(tail) == len(full) - 9 and all((a == b).all() for a, b in zip(full[9:], tail))
    # A reader told where to stop (the end of the shards on disk) yields exactly up to there.
    window = [b.tokens for b in iter_batches(store, plan, 9, with_teacher=False, stop=12)]
    assert len(window) == 3 and all((a == b).all() for a, b in zip(full[9:12], window))
    # The rows are the store's rows, under the plan's order.
    first = plan.passes[0]
    expected = store.read_tokens(1)[first.row_order()[:5]]
    np.testing.assert_array_equal(full[0], expected)


def test_a_damaged_chunk_is_a_one_line_error(prepared_store):
    store = Store.open(str(prepared_store))
    chunk_file = next(p for p in (prepared_store / "tokens" / "shard-00000" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(data))
    plan = BatchPlan({0: store.chunk_ranges(0)}, [0], 1, 4, False, 0)
    with pytest.raises(DaramError, match="shard 0"):
        list(iter_batches(store, plan, 0, with_teacher=False))


def test_prefetcher_keeps_order_and_re_raises_errors():
    assert list(Prefetcher(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise DaramError("boom")

    items = Prefetcher(failing(), depth=2)
    assert next(items) == 1
    with pytest.raises(DaramError, match="boom"):
        next(items)
    stopped = Prefetcher(iter(range(10**6)), depth=2)
    next(stopped)
    stopped.close()
    assert not stopped.thread.is_alive()


def test_the_plan_says_which_shards_are_still_to_be_read():
    plan = BatchPlan(RANGES, [1, 0, 2], epochs=2, batch_size=4, shuffle=False, seed=0)  # 37, 10 and 5 per pass
    assert plan.shard_of(0) == 1 and plan.shard_of(36) == 1 and plan.shard_of(37) == 0 and plan.shard_of(47) == 2
    assert plan.shards_from(0) == [1, 0, 2, 1, 0, 2]  # a shard comes back each epoch
    assert plan.shards_from(40) == [0, 2, 1, 0, 2] and plan.shards_from(plan.total_batches) == []
    assert plan.shard_of(plan.total_batches) is None
