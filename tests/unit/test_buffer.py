"""The per-destination buffers: ordering rules and byte-bounded backpressure."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import make_event, numbered_event
from walrelay.model import Event, Route
from walrelay.pipeline.buffer import BufferClosed, KeyedBuffer, OrderedBuffer


@pytest.fixture(autouse=True)
def _sizes_are_body_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count buffer space in body bytes: no per-event overhead."""
    monkeypatch.setattr("walrelay.model.EVENT_OVERHEAD_BYTES", 0)


def ev(i: int, *keys: str, size: int = 10) -> Event:
    """Event number ``i`` (four per commit); no keys = a barrier."""
    return numbered_event(i, *keys, size=size, per_commit=4)


def ids(events: list[Event]) -> list[tuple[int, int]]:
    return [(e.commit_lsn, e.seq) for e in events]


# -- KeyedBuffer ---------------------------------------------------------------


def test_independent_keys_are_all_ready_in_id_order() -> None:
    b = KeyedBuffer(1 << 20)
    events = [ev(i, f"k{i}") for i in range(10)]
    for e in events:
        b.push(e)
    assert b.take(4) == events[:4]
    assert b.take(100) == events[4:]
    assert b.in_flight == 10
    assert b.take(100) == []


def test_same_key_waits_for_the_earlier_one() -> None:
    b = KeyedBuffer(1 << 20)
    a1, c1, a2, a3 = ev(0, "a"), ev(1, "c"), ev(2, "a"), ev(3, "a")
    for e in (a1, c1, a2, a3):
        b.push(e)
    assert b.take(10) == [a1, c1]
    b.done([c1])
    assert b.take(10) == []
    b.done([a1])
    assert b.take(10) == [a2]
    b.done([a2])
    assert b.take(10) == [a3]
    b.done([a3])
    assert b.count == 0 and b.nbytes == 0 and b.keys_held == 0


def test_key_change_update_holds_both_keys() -> None:
    b = KeyedBuffer(1 << 20)
    old = ev(0, "old")
    move = ev(1, "old", "new")  # UPDATE changing the key old -> new
    new = ev(2, "new")
    other = ev(3, "x")
    for e in (old, move, new, other):
        b.push(e)
    # "new" is not in flight, but the earlier key-change holds it: a skipped
    # event blocks all its keys, so `new` must not overtake `move`.
    assert b.take(10) == [old, other]
    b.done([old])
    assert b.take(10) == [move]
    b.done([move])
    assert b.take(10) == [new]


def test_two_key_event_waits_for_both_predecessors() -> None:
    b = KeyedBuffer(1 << 20)
    a, c, ac = ev(0, "a"), ev(1, "c"), ev(2, "a", "c")
    for e in (a, c, ac):
        b.push(e)
    assert b.take(10) == [a, c]
    b.done([a])
    assert b.take(10) == []
    b.done([c])
    assert b.take(10) == [ac]


def test_unblocked_events_start_before_younger_ready_ones() -> None:
    b = KeyedBuffer(1 << 20)
    a1, a2, y = ev(0, "a"), ev(1, "a"), ev(2, "y")
    for e in (a1, a2, y):
        b.push(e)
    assert b.take(1) == [a1]
    b.done([a1])
    assert b.take(10) == [a2, y]  # id order across both ready sources


def test_barrier_waits_goes_alone_and_holds_later_events() -> None:
    b = KeyedBuffer(1 << 20)
    a, c, trunc, d, a2 = ev(0, "a"), ev(1, "c"), ev(2), ev(3, "d"), ev(4, "a")
    for e in (a, c, trunc, d, a2):
        b.push(e)
    assert b.take(10) == [a, c]
    b.done([a])
    assert b.take(10) == []  # c still in flight
    b.done([c])
    assert b.take(10) == [trunc]
    assert b.take(10) == []  # nothing after it starts meanwhile
    b.done([trunc])
    assert b.take(10) == [d, a2]


def test_consecutive_barriers() -> None:
    b = KeyedBuffer(1 << 20)
    t1, t2, x, t3 = ev(0), ev(1), ev(2, "x"), ev(3)
    for e in (t1, t2, x, t3):
        b.push(e)
    assert b.take(10) == [t1]
    b.done([t1])
    assert b.take(10) == [t2]
    b.done([t2])
    assert b.take(10) == [x]
    b.done([x])
    assert b.take(10) == [t3]
    b.done([t3])
    assert b.count == 0


# -- OrderedBuffer ---------------------------------------------------------------


def test_ordered_cuts_batches_in_id_order_and_barriers_alone() -> None:
    b = OrderedBuffer(1 << 20)
    events = [ev(0, "a"), ev(1, "a"), ev(2, "b"), ev(3), ev(4, "a"), ev(5, "c")]
    for e in events:
        b.push(e)
    first = b.take(2)
    assert first == events[:2]
    b.done(first)
    second = b.take(10)
    assert second == events[2:3]
    b.done(second)
    assert b.take(10) == [events[3]]
    b.done([events[3]])
    rest = b.take(10)
    assert rest == events[4:]
    b.done(rest)
    assert b.count == 0 and b.nbytes == 0


# -- the ordering property -------------------------------------------------------


def reference_eligible(events: list[Event], done: set[int], out: set[int]) -> list[int]:
    """The specification, as a scan: indexes of events that may start now."""
    blocked: set[str] = set()
    result = []
    for i, e in enumerate(events):
        if i in done:
            continue
        if not e.keys:  # barrier
            if i not in out and not any(j not in done for j in range(i)):
                result.append(i)
            break
        if i in out or blocked.intersection(e.keys):
            blocked.update(e.keys)
            continue
        result.append(i)
        blocked.update(e.keys)
    return result


key_sets = st.one_of(
    st.tuples(st.sampled_from("abcdef")),
    st.tuples(st.sampled_from("abcdef"), st.sampled_from("abcdef")),
    st.just(()),
)


@settings(max_examples=400, deadline=None)
@given(
    keys=st.lists(key_sets, min_size=1, max_size=40),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), max_size=120),
)
def test_keyed_buffer_matches_the_scan_specification(
    keys: list[tuple[str, ...]], ops: list[tuple[bool, int]]
) -> None:
    events = [ev(i, *k) for i, k in enumerate(keys)]
    index = {id(e): i for i, e in enumerate(events)}
    b = KeyedBuffer(1 << 30)
    pushed = 0
    done: set[int] = set()
    out: list[list[int]] = []  # batches in flight
    flying: set[int] = set()

    def check_take(limit: int) -> None:
        expected = reference_eligible(events[:pushed], done, flying)
        got = [index[id(e)] for e in b.take(limit)]
        assert got == (expected[:limit] if limit > 0 else [])
        if got:
            if not events[got[0]].keys:
                assert len(got) == 1
            out.append(got)
            flying.update(got)

    for is_take, n in ops:
        if pushed < len(events) and n % 3 == 0:
            b.push(events[pushed])
            pushed += 1
        elif is_take:
            check_take(n % 5)
        elif out:
            batch = out.pop(n % len(out))
            b.done([events[i] for i in batch])
            done.update(batch)
            flying.difference_update(batch)
    while pushed < len(events):
        b.push(events[pushed])
        pushed += 1
    # Liveness: keep finishing; everything gets out.
    for _ in range(len(events) + 1):
        check_take(1000)
        while out:
            batch = out.pop()
            b.done([events[i] for i in batch])
            done.update(batch)
            flying.difference_update(batch)
    assert done == set(range(len(events)))
    assert b.count == 0 and b.nbytes == 0 and b.in_flight == 0 and b.keys_held == 0


# -- backpressure ------------------------------------------------------------------


async def test_put_blocks_when_full_and_resumes_when_space_is_freed() -> None:
    b = KeyedBuffer(100)
    first = [ev(i, f"k{i}", size=40) for i in range(2)]
    for e in first:
        await b.put(e)
    assert b.nbytes == 80
    late = ev(2, "k2", size=40)
    putter = asyncio.create_task(b.put(late))
    await asyncio.sleep(0)
    assert not putter.done() and b.blocked
    batch = b.take(10)
    assert batch == first
    await asyncio.sleep(0)
    assert not putter.done()  # in flight still counts
    b.done(batch[:1])
    await putter
    assert not b.blocked
    assert b.nbytes == 80 and b.count == 2


async def test_an_event_bigger_than_the_bound_is_admitted_when_empty() -> None:
    b = OrderedBuffer(100)
    huge = ev(0, "a", size=1000)
    await b.put(huge)  # empty: admitted, no deadlock
    small = ev(1, "b", size=1)
    putter = asyncio.create_task(b.put(small))
    await asyncio.sleep(0)
    assert not putter.done()
    b.done(b.take(10))
    await putter
    assert b.count == 1


async def test_waiting_puts_are_admitted_in_order() -> None:
    b = OrderedBuffer(100)
    await b.put(ev(0, "a", size=100))
    order: list[int] = []

    async def put(i: int, size: int) -> None:
        await b.put(ev(i, "a", size=size))
        order.append(i)

    big = asyncio.create_task(put(1, 90))
    await asyncio.sleep(0)
    small = asyncio.create_task(put(2, 5))  # would fit sooner, but waits its turn
    await asyncio.sleep(0)
    b.done(b.take(1))
    await asyncio.gather(big, small)
    assert order == [1, 2]
    assert b.nbytes == 95


async def test_cancelled_put_leaves_no_trace_and_wakes_the_next() -> None:
    b = OrderedBuffer(10)
    await b.put(ev(0, "a", size=10))
    first = asyncio.create_task(b.put(ev(1, "a", size=5)))
    second = asyncio.create_task(b.put(ev(2, "a", size=5)))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    b.done(b.take(1))
    await second
    assert b.count == 1 and b.nbytes == 5 and not b.blocked


async def test_close_fails_waiting_and_later_puts() -> None:
    b = OrderedBuffer(10)
    await b.put(ev(0, "a", size=10))
    waiting = asyncio.create_task(b.put(ev(1, "a", size=10)))
    await asyncio.sleep(0)
    b.close()
    with pytest.raises(BufferClosed):
        await waiting
    with pytest.raises(BufferClosed):
        await b.put(ev(2, "a", size=1))


@pytest.mark.parametrize("buffer_class", [KeyedBuffer, OrderedBuffer])
def test_buffer_bytes_are_the_events_sizes(
    buffer_class: type[KeyedBuffer | OrderedBuffer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffers count an event without a route without calling Event.size:
    the same bytes, per-event overhead included, as for a routed event (whose
    record value counts too)."""
    monkeypatch.setattr("walrelay.model.EVENT_OVERHEAD_BYTES", 320)
    events = [
        make_event(1, 0, keys=("a",), body=b"x" * 10),
        make_event(1, 1, keys=("b",), body=b"y" * 3, route=Route("t", "k", b"v" * 7)),
        make_event(1, 2, keys=("c",), body=b"z" * 5, route=Route("t", "k", None)),
    ]
    buffer = buffer_class(10_000)
    for event in events:
        assert buffer.try_push(event)
    assert buffer.nbytes == sum(e.size for e in events) == (10 + 3 + 7 + 5) + 3 * 320
    batch = buffer.take(10)
    assert len(batch) == 3
    buffer.done(batch)
    assert (buffer.nbytes, buffer.count) == (0, 0)
