"""The parking index alone: blocked keys, barriers, heads, what is due, the cap.

Pure: no database, no event loop. Each rule has cases on both sides, so that
breaking it fails a test.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from walrelay.model import Event
from walrelay.pipeline.parking.index import RESUME_FRACTION, ParkedRow, ParkingIndex

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def event(i: int, *keys: str) -> Event:
    """Event number ``i`` (ids increase with i); no keys = a barrier (TRUNCATE)."""
    return Event(
        commit_lsn=1000 + i // 4,
        seq=i % 4,
        op="truncate" if not keys else "update",
        table="public.t",
        keys=keys,
        body=b"{}",
        xid=1,
        committed_at=T0,
    )


def row(i: int, *keys: str, size: int = 10, next_at: float = 0.0, **kw: object) -> ParkedRow:
    """The parked row of :func:`event` ``i``, written to the table unless told."""
    kw.setdefault("committed", True)
    return ParkedRow((1000 + i // 4, i % 4), keys, size, next_at=next_at, **kw)  # type: ignore


def index(*rows: ParkedRow, max_events: int = 1000, max_bytes: int = 1 << 30) -> ParkingIndex:
    ix = ParkingIndex(max_events, max_bytes)
    for r in rows:
        ix.add(r)
    return ix


def heads(ix: ParkingIndex) -> list[ParkedRow]:
    return [r for r in ix.rows.values() if ix.is_head(r)]


# -- blocking ---------------------------------------------------------------------


def test_nothing_parked_blocks_nothing() -> None:
    ix = index()
    assert not ix.active and ix.blocked_keys == 0
    assert not ix.blocks(event(1, "a")) and not ix.blocks(event(2))
    assert ix.blocked([event(1, "a"), event(2)]) == []


def test_a_parked_key_blocks_events_sharing_any_of_its_keys_only() -> None:
    ix = index(row(0, "a"))
    assert ix.active and ix.blocked_keys == 1
    assert ix.blocks(event(1, "a"))
    assert ix.blocks(event(2, "b", "a"))  # a key change touching the parked key
    assert not ix.blocks(event(3, "b"))
    batch = [event(4, "b"), event(5, "a"), event(6, "c")]
    assert ix.blocked(batch) == [batch[1]]


def test_a_truncate_waits_behind_any_parked_key() -> None:
    ix = index(row(0, "a"))
    assert ix.blocks(event(1))


def test_a_parked_barrier_blocks_everything() -> None:
    ix = index(row(0))
    assert ix.active and ix.blocked_keys == 0
    assert ix.blocks(event(1, "x")) and ix.blocks(event(2))
    batch = [event(3, "y"), event(4, "z")]
    assert ix.blocked(batch) == batch


def test_an_event_with_a_key_twice_is_indexed_once() -> None:
    r = row(0, "a", "a")
    ix = index(r)
    assert r.keys == ("a",) and ix.count == 1
    ix.unblock(r)
    assert not ix.active


def test_a_skipped_row_is_known_but_blocks_and_counts_nothing() -> None:
    skipped = row(0, "a", skipped=True)
    ix = index(skipped)
    assert ix.get(skipped.ident) is skipped
    assert not ix.active and not ix.blocks(event(1, "a"))
    assert ix.count == 0 and ix.nbytes == 0
    assert ix.oldest_commit_lsn() == skipped.ident[0]  # still in the table


def test_parking_a_skipped_row_again_replaces_it() -> None:
    old = row(0, "a", skipped=True)
    ix = index(old)
    new = row(0, "a")
    ix.add(new, replaces=old)
    assert ix.get(new.ident) is new and ix.blocks(event(1, "a")) and ix.count == 1


def test_forget_drops_the_row_and_its_keys() -> None:
    r = row(0, "a", size=7)
    ix = index(r)
    ix.forget(r)
    assert ix.get(r.ident) is None and not ix.active and (ix.count, ix.nbytes) == (0, 0)
    assert ix.oldest_commit_lsn() is None
    ix.forget(r)  # twice: nothing more happens
    assert (ix.count, ix.nbytes) == (0, 0)


def test_unblock_keeps_the_row_known() -> None:
    r = row(0, "a")
    ix = index(r)
    ix.unblock(r)
    assert not r.blocking and not ix.active and ix.get(r.ident) is r


# -- heads: who may go first --------------------------------------------------------


def test_only_the_oldest_of_a_key_is_a_head() -> None:
    r0, r1, r2 = row(0, "a"), row(1, "a"), row(2, "b")
    ix = index(r0, r1, r2)
    assert heads(ix) == [r0, r2]


def test_an_event_with_two_keys_waits_for_the_oldest_of_each() -> None:
    r0, r1, r2 = row(0, "a"), row(1, "b"), row(2, "a", "b")
    ix = index(r0, r1, r2)
    assert not ix.is_head(r2)
    ix.unblock(r0)
    assert not ix.is_head(r2)  # still behind 1 on key b
    ix.unblock(r1)
    assert ix.is_head(r2)


def test_a_barrier_waits_for_everything_older_and_holds_everything_newer() -> None:
    r0, r1, barrier, r3, r4 = row(0, "a"), row(1, "b"), row(2), row(3, "c"), row(4, "a")
    ix = index(r0, r1, barrier, r3, r4)
    assert heads(ix) == [r0, r1]
    ix.unblock(r0)
    assert heads(ix) == [r1]  # 4 is first of key a now, but newer than the barrier
    ix.unblock(r1)
    assert heads(ix) == [barrier]
    ix.unblock(barrier)
    assert heads(ix) == [r3, r4]


def test_a_row_older_than_a_barrier_added_later_delays_it() -> None:
    barrier, r0 = row(2), row(0, "a")
    ix = index(barrier)
    assert heads(ix) == [barrier]
    ix.add(r0)  # re-read from the table: older than the barrier
    assert heads(ix) == [r0]
    ix.unblock(r0)
    assert heads(ix) == [barrier]


def test_the_next_barrier_takes_over_when_the_first_goes() -> None:
    b1, r1, b2, r2 = row(0), row(1, "a"), row(2), row(3, "b")
    ix = index(b1, r1, b2, r2)
    assert heads(ix) == [b1]
    ix.unblock(b1)
    assert heads(ix) == [r1]
    ix.unblock(r1)
    assert heads(ix) == [b2]
    ix.unblock(b2)
    assert heads(ix) == [r2]


def test_rows_reach_their_key_queue_in_id_order_whatever_the_insert_order() -> None:
    r0, r1, r2 = row(0, "a"), row(1, "a"), row(2, "a")
    ix = index(r2, r0, r1)
    order = []
    while ix.active:
        (head,) = heads(ix)
        order.append(head)
        ix.unblock(head)
    assert order == [r0, r1, r2]


def test_removing_a_row_from_the_middle_of_its_key_keeps_the_head() -> None:
    r0, r1, r2 = row(0, "a"), row(1, "a"), row(2, "a")
    ix = index(r0, r1, r2)
    ix.forget(r1)  # discarded by an operator
    assert heads(ix) == [r0]
    ix.unblock(r0)
    assert heads(ix) == [r2]


def test_dead_busy_or_unwritten_heads_are_not_eligible() -> None:
    ok, dead, busy, queued = row(0, "a"), row(1, "b", dead=True), row(2, "c"), row(3, "d")
    queued.committed = False
    busy.busy = True
    ix = index(ok, dead, busy, queued)
    assert [r for r in ix.rows.values() if ix.eligible(r)] == [ok]
    assert all(ix.is_head(r) for r in (ok, dead, busy, queued))


def test_a_dead_head_keeps_its_key_blocked() -> None:
    dead, r1 = row(0, "a", dead=True), row(1, "a")
    ix = index(dead, r1)
    assert ix.blocks(event(2, "a")) and not ix.eligible(r1) and not ix.eligible(dead)


# -- what is due --------------------------------------------------------------------


def test_due_rows_come_soonest_first_within_the_limit() -> None:
    rows = [row(0, "a", next_at=30), row(1, "b", next_at=10), row(2, "c", next_at=20)]
    ix = index(*rows)
    for r in rows:
        ix.consider(r)
    assert ix.take_due(now=100, limit=2) == [rows[1], rows[2]]
    assert ix.take_due(now=100, limit=5) == [rows[0]]
    assert ix.take_due(now=100, limit=5) == []  # taken rows left the queue


def test_rows_not_yet_due_wait_and_say_when() -> None:
    early, late = row(0, "a", next_at=5), row(1, "b", next_at=50)
    ix = index(early, late)
    ix.consider(early)
    ix.consider(late)
    assert ix.take_due(now=10, limit=5) == [early]
    assert ix.next_due_at() == 50
    assert ix.take_due(now=49, limit=5) == []
    assert ix.take_due(now=50, limit=5) == [late]
    assert ix.next_due_at() is None


def test_only_eligible_rows_are_queued() -> None:
    head, behind = row(0, "a"), row(1, "a")
    ix = index(head, behind)
    assert ix.consider(head) and not ix.consider(behind)
    assert ix.take_due(now=0, limit=5) == [head]


def test_stale_queue_entries_are_skipped() -> None:
    r = row(0, "a", next_at=1)
    ix = index(r)
    ix.consider(r)
    r.next_at = 99  # a failed attempt moved it: the old entry is stale
    ix.consider(r)
    assert ix.take_due(now=50, limit=5) == []
    assert ix.take_due(now=100, limit=5) == [r]


def test_a_row_queued_twice_is_taken_once() -> None:
    r = row(0, "a", next_at=1)
    ix = index(r)
    ix.consider(r)
    ix.consider(r)
    assert ix.take_due(now=5, limit=5) == [r]


def test_a_row_that_stopped_being_a_head_is_not_taken() -> None:
    r0 = row(1, "a", next_at=1)
    ix = index(r0)
    ix.consider(r0)
    ix.add(row(0, "a"))  # an older row of the key appeared (re-read)
    assert ix.take_due(now=5, limit=5) == []


def test_unblocking_a_head_queues_the_next_of_its_key() -> None:
    r0, r1 = row(0, "a"), row(1, "a", next_at=3)
    ix = index(r0, r1)
    ix.unblock(r0)
    assert ix.take_due(now=5, limit=5) == [r1]


def test_unblocking_the_first_barrier_queues_the_rows_behind_it() -> None:
    barrier, r1, r2 = row(0), row(1, "a"), row(2, "b")
    ix = index(barrier, r1, r2)
    ix.unblock(barrier)
    assert ix.take_due(now=5, limit=5) == [r1, r2]


def test_unblocking_the_last_row_before_a_barrier_queues_the_barrier() -> None:
    r0, barrier = row(0, "a"), row(1)
    ix = index(r0, barrier)
    ix.unblock(r0)
    assert ix.take_due(now=5, limit=5) == [barrier]


# -- the cap ----------------------------------------------------------------------


def test_the_event_cap_pauses_and_resumes_below_ninety_percent() -> None:
    ix = ParkingIndex(max_events=10, max_bytes=1 << 30)
    rows = [row(i, f"k{i}") for i in range(10)]
    for r in rows[:9]:
        ix.add(r)
        assert ix.check_cap() is None
    ix.add(rows[9])
    assert ix.check_cap() == "paused" and ix.paused
    assert ix.check_cap() is None  # reported once
    ix.unblock(rows[0])  # 9 = 90%: not below it
    assert ix.check_cap() is None and ix.paused
    ix.unblock(rows[1])  # 8
    assert ix.check_cap() == "resumed" and not ix.paused
    assert ix.check_cap() is None


def test_the_byte_cap_pauses_and_both_must_be_below_ninety_percent() -> None:
    ix = ParkingIndex(max_events=10, max_bytes=100)
    big = row(0, "a", size=100)
    ix.add(big)
    assert ix.nbytes == 100 and ix.check_cap() == "paused"
    small = [row(i, f"k{i}", size=1) for i in range(1, 10)]
    for r in small:
        ix.add(r)
    ix.unblock(big)  # bytes 9 now, but 9 events = 90% of max_events
    assert ix.check_cap() is None and ix.paused
    ix.unblock(small[0])
    assert ix.check_cap() == "resumed"


def test_few_but_big_rows_keep_the_byte_cap_paused() -> None:
    ix = ParkingIndex(max_events=10, max_bytes=100)
    big, still_big = row(0, "a", size=100), row(1, "b", size=95)
    ix.add(big)
    ix.add(still_big)
    assert ix.check_cap() == "paused"
    ix.unblock(big)  # 1 event, but 95 bytes: not below 90% of max_bytes
    assert ix.check_cap() is None and ix.paused
    ix.forget(still_big)
    assert ix.check_cap() == "resumed"


def test_skipped_rows_do_not_count_toward_the_cap() -> None:
    ix = ParkingIndex(max_events=2, max_bytes=1 << 30)
    ix.add(row(0, "a", skipped=True))
    ix.add(row(1, "b"))
    assert ix.count == 1 and ix.check_cap() is None


@pytest.mark.parametrize("kind", ["forget", "unblock"])
def test_leaving_rows_give_their_bytes_back(kind: str) -> None:
    r0, r1 = row(0, "a", size=30), row(1, "b", size=12)
    ix = index(r0, r1)
    assert (ix.count, ix.nbytes) == (2, 42)
    getattr(ix, kind)(r0)
    assert (ix.count, ix.nbytes) == (1, 12)


def test_resume_fraction() -> None:
    assert RESUME_FRACTION == 0.9


@pytest.mark.parametrize("seed", range(8))
def test_draining_heads_in_any_order_keeps_key_and_barrier_order(seed: int) -> None:
    """Whatever head goes first, a key's rows leave in id order, nothing passes a
    barrier, and the counts come back to zero."""
    rng = random.Random(seed)
    rows = []
    for i in range(120):
        r = rng.random()
        if r < 0.05:
            rows.append(row(i))
        elif r < 0.2:
            rows.append(row(i, f"k{rng.randrange(6)}", f"k{rng.randrange(6)}"))
        else:
            rows.append(row(i, f"k{rng.randrange(6)}"))
    ix = ParkingIndex(1000, 1 << 30)
    for parked in rng.sample(rows, len(rows)):  # the table may be read in any order
        ix.add(parked)
    left: list[ParkedRow] = []
    while ix.active:
        candidates = heads(ix)
        assert candidates, "rows are parked but none may go"
        head = rng.choice(candidates)
        left.append(head)
        ix.unblock(head)
    assert (ix.count, ix.nbytes) == (0, 0) and sorted(r.ident for r in left) == [
        r.ident for r in rows
    ]
    position = {r.ident: n for n, r in enumerate(left)}
    for key in {k for r in rows for k in r.keys}:
        mine = [position[r.ident] for r in rows if key in r.keys]
        assert mine == sorted(mine), f"key {key} out of order"
    for b in (r for r in rows if not r.keys):
        assert all(position[r.ident] < position[b.ident] for r in rows if r.ident < b.ident)
        assert all(position[r.ident] > position[b.ident] for r in rows if r.ident > b.ident)


# -- the retry loop's wake ------------------------------------------------------------


async def test_retry_loop_is_woken_only_while_a_row_is_queued() -> None:
    """The destination wakes the loop after every finished batch: with nothing
    queued the pass would find nothing, so the wake is skipped; a queued row
    still wakes it."""
    from typing import Any

    from walrelay.pipeline.parking.retry_loop import ParkedRetryLoop

    ix = index()
    none: Any = None
    loop = ParkedRetryLoop("d", ix, none, none, none, max_in_flight=4)
    loop.wake()
    assert not ix.queued and not loop._wake.is_set()
    parked = row(1, "a")
    ix.add(parked)
    assert ix.consider(parked) and ix.queued
    loop.wake()
    assert loop._wake.is_set()
