"""Router.route_inserts: a run of Insert frames to the buffers in one call.

Which destinations may take the run (those that take the event as built), the
counts, and what a full buffer leaves for the reader to await: every later
event of that destination, in id order.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_router import BEGIN, ORDERS, make
from walrelay.model import Relation

XLOG_HEAD = b"w" + bytes(24)


def insert_frame(relation: Relation, i: int) -> bytes:
    values = [str(i).encode(), b"x"]
    tup = len(values).to_bytes(2, "big")
    for v in values:
        tup += b"t" + len(v).to_bytes(4, "big") + v
    return XLOG_HEAD + b"I" + relation.oid.to_bytes(4, "big") + b"N" + tup


def run_of(n: int) -> list[bytes]:
    return [insert_frame(ORDERS, i) for i in range(n)]


def ids(events: list[Any]) -> list[int]:
    return [e.seq for e in events]


def test_a_run_is_built_once_and_counted_per_destination() -> None:
    router, tracker = make({"name": "a"}, {"name": "b", "tables": ["public.orders"]})
    frames = [b"keepalive", *run_of(5)]
    routed, blocked = router.route_inserts(BEGIN, ORDERS, frames, 1, 3)
    assert (routed, blocked) == (5, None)
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("a") == tracker.pending_events("b") == 5
    assert router.events_in == 5
    a, b = router.destinations["a"], router.destinations["b"]
    taken = a._buffer.take(100)
    assert ids(taken) == [3, 4, 5, 6, 7]
    assert [e.body for e in b._buffer.take(100)] == [e.body for e in taken]


@pytest.mark.parametrize(
    "config",
    [
        {"name": "a", "transforms": [{"exclude": ["v"]}]},
        {"name": "a", "format": "debezium"},
        {"name": "a", "transaction_metadata": True},
    ],
    ids=["transform", "format", "transaction-metadata"],
)
def test_destinations_with_steps_take_the_general_path(config: dict[str, Any]) -> None:
    router, _ = make({"name": "plain"}, config)
    assert router.route_inserts(BEGIN, ORDERS, run_of(3), 0, 0) == (0, None)
    assert router.events_in == 0


def test_a_table_routed_nowhere_takes_the_general_path() -> None:
    router, _ = make({"name": "a", "tables": ["public.outbox"]})
    assert router.route_inserts(BEGIN, ORDERS, run_of(3), 0, 0) == (0, None)


def test_a_full_buffer_stops_the_run_at_the_event_it_refused() -> None:
    # Room for about two events in "small"; "big" has room for the whole run.
    # As on the per-change path, the run stops at the first refused event: it
    # is what the reader awaits room for; the frames after it are not taken.
    router, tracker = make({"name": "small"}, {"name": "big"}, max_buffer_bytes=1 << 20)
    small = router.destinations["small"]
    small._buffer.max_bytes = 900
    routed, blocked = router.route_inserts(BEGIN, ORDERS, run_of(6), 0, 0)
    assert blocked is not None
    assert [(dest.name, e.seq) for dest, e in blocked] == [("small", routed - 1)]
    assert 1 < routed < 6
    assert ids(small._buffer.take(100)) == list(range(routed - 1))
    assert ids(router.destinations["big"]._buffer.take(100)) == list(range(routed))
    assert router.events_in == routed
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("small") == tracker.pending_events("big") == routed


def test_a_refused_first_event_is_routed_alone() -> None:
    router, _ = make({"name": "only"}, max_buffer_bytes=1 << 20)
    only = router.destinations["only"]
    only._buffer.max_bytes = 1
    assert only.try_put(router._build_inserts(BEGIN, ORDERS, run_of(1), 0, 0)[0])
    routed, blocked = router.route_inserts(BEGIN, ORDERS, run_of(4), 0, 1)
    assert routed == 1
    assert blocked is not None and [(d.name, e.seq) for d, e in blocked] == [("only", 1)]
