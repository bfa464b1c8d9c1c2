"""The Router: routes per (table, op), builds once, shapes per destination, counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from walrelay.config import DestinationConfig
from walrelay.model import Begin, Change, Column, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.router import Router
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink
from walrelay.source.types import TypeRegistry

INT4, TEXT = 23, 25
BEGIN = Begin(xid=7, commit_lsn=0x1000, committed_at=datetime(2024, 1, 2, tzinfo=UTC))


def rel(name: str, oid: int) -> Relation:
    return Relation(
        oid=oid,
        schema="public",
        name=name,
        replica_identity="d",
        columns=(Column("id", INT4, -1, True), Column("v", TEXT, -1, False)),
    )


ORDERS, OUTBOX = rel("orders", 1), rel("outbox", 2)


def insert(relation: Relation, i: int) -> Change:
    return Change(op="insert", relation=relation, new=(str(i).encode(), b"x"))


def make(*configs: dict[str, Any], max_buffer_bytes: int = 1 << 20) -> tuple[Router, LsnTracker]:
    dcfgs = [DestinationConfig.model_validate({"sink": {"type": "stdout"}, **c}) for c in configs]
    dests = {
        d.name: Destination(d.name, MemorySink(), max_buffer_bytes=max_buffer_bytes) for d in dcfgs
    }
    tracker = LsnTracker()
    tracker.begin(BEGIN.commit_lsn)
    return Router(dcfgs, dests, EnvelopeBuilder(TypeRegistry()), tracker), tracker


def test_routes_by_table_and_op_and_counts_once_per_destination() -> None:
    router, tracker = make(
        {"name": "all"},
        {"name": "orders_only", "tables": ["public.orders"]},
        {"name": "deletes", "ops": ["delete"]},
    )
    change = insert(ORDERS, 1)
    dests = router.routes_of(change)
    assert [d.name for d in dests] == ["all", "orders_only"]
    assert [d.name for d in router.routes_of(insert(OUTBOX, 1))] == ["all"]
    assert router.dispatch(router.build(BEGIN, change, 0), dests) is None
    assert tracker.pending_events() == 0  # counted in bulk, not yet told
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("all") == 1
    assert tracker.pending_events("orders_only") == 1
    assert tracker.pending_events("deletes") == 0
    assert router.events_in == 1


def test_truncate_of_several_tables_reaches_each_destination_once() -> None:
    router, _ = make({"name": "a", "tables": ["public.orders", "public.outbox"]}, {"name": "b"})
    change = Change(op="truncate", relations=(ORDERS, OUTBOX))
    assert sorted(d.name for d in router.routes_of(change)) == ["a", "b"]


def test_ignored_table_goes_nowhere() -> None:
    dcfg = DestinationConfig.model_validate({"name": "a", "sink": {"type": "stdout"}})
    dest = Destination("a", MemorySink())
    router = Router(
        [dcfg], {"a": dest}, EnvelopeBuilder(TypeRegistry()), LsnTracker(), ignore_table="x.hb"
    )
    assert router.routes_for("x.hb", "insert") == []
    assert router.routes_for("public.orders", "insert") == [dest]


def test_outbox_step_applies_only_to_its_destination() -> None:
    router, tracker = make(
        {"name": "plain"},
        {
            "name": "events",
            "router": {"type": "outbox", "table": "public.orders", "other_ops": "skip"},
        },
    )
    update = Change(op="update", relation=ORDERS, new=(b"1", b"y"))
    event = router.build(BEGIN, update, 0)
    # An UPDATE of the outbox table: the outbox destination skips it, the other takes it.
    assert router.shape("events", event) is None
    assert router.shape("plain", event) is event
    other = router.build(BEGIN, insert(OUTBOX, 1), 1)
    assert router.shape("events", other) is other  # other tables pass unchanged
    router.dispatch(event, router.routes_of(update))
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("plain") == 1
    assert tracker.pending_events("events") == 0


def test_snapshot_destinations_follow_snapshot_tables_and_ops() -> None:
    router, _ = make(
        {"name": "a"},
        {"name": "never", "snapshot": "never"},
        {"name": "other", "tables": ["public.outbox"]},
        {"name": "no_inserts", "ops": ["delete"]},
    )
    assert [d.name for d in router.snapshot_destinations("public.orders")] == ["a"]


async def test_full_buffer_is_returned_for_the_caller_to_await() -> None:
    router, tracker = make({"name": "a"}, max_buffer_bytes=1)
    dests = router.routes_of(insert(ORDERS, 1))
    first = router.dispatch(router.build(BEGIN, insert(ORDERS, 1), 0), dests)
    second = router.dispatch(router.build(BEGIN, insert(ORDERS, 2), 1), dests)
    # The first event always fits an empty buffer; the second must wait.
    assert first is None
    assert second is not None and [d.name for d, _ in second] == ["a"]
    assert orjson.loads(second[0][1].body)["key"] == {"id": 2}
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("a") == 2


async def test_put_batch_counts_then_hands_over_in_order() -> None:
    router, tracker = make({"name": "a"})
    events = [router.build(BEGIN, insert(ORDERS, i), i) for i in range(5)]
    dest = router.destinations["a"]
    await router.put_batch(BEGIN.commit_lsn, dest, events)
    assert tracker.pending_events("a") == 5
    assert dest.buffered_events == 5


async def test_wait_confirmed_wakes_when_the_tracker_passes_the_lsn() -> None:
    tracker = LsnTracker()
    tracker.begin(0x10)
    tracker.add(0x10, 1, destination="a")
    tracker.seal(0x10, 0x18)
    waiter = asyncio.create_task(tracker.wait_confirmed(0x18))
    await asyncio.sleep(0)  # let the waiter register (not a wait for a condition)
    assert not waiter.done()
    tracker.finish(0x10, 1, destination="a")
    await asyncio.wait_for(waiter, timeout=5)
    assert tracker.confirmed == 0x18
    await tracker.wait_confirmed(0x18)  # already there: returns at once
