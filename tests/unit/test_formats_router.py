"""The Router's last per-destination step: the output format, and transaction
metadata (begin/end events counted for the safe LSN like any other)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from walrelay.config import DestinationConfig
from walrelay.model import Begin, Change, Column, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.router import Router
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink
from walrelay.source.types import TypeRegistry

BEGIN = Begin(xid=7, commit_lsn=0x1000, committed_at=datetime(2024, 1, 2, tzinfo=UTC))
ORDERS = Relation(
    1, "public", "orders", "d", (Column("id", 23, -1, True), Column("v", 25, -1, False))
)
ITEMS = Relation(2, "public", "items", "d", (Column("id", 23, -1, True),))


def make(*configs: dict[str, Any]) -> tuple[Router, LsnTracker]:
    dcfgs = [DestinationConfig.model_validate({"sink": {"type": "stdout"}, **c}) for c in configs]
    dests = {d.name: Destination(d.name, MemorySink()) for d in dcfgs}
    tracker = LsnTracker()
    tracker.begin(BEGIN.commit_lsn)
    return Router(dcfgs, dests, EnvelopeBuilder(TypeRegistry()), tracker), tracker


def capture(router: Router) -> dict[str, list[Any]]:
    """Every event each destination was offered, in order (the buffers always take)."""
    sent: dict[str, list[Any]] = {name: [] for name in router.destinations}

    def taker(into: list[Any]) -> Any:
        def try_put(event: Any) -> bool:
            into.append(event)
            return True

        return try_put

    for name, dest in router.destinations.items():
        dest.try_put = taker(sent[name])  # type: ignore[method-assign]
    return sent


def test_default_format_leaves_the_event_untouched() -> None:
    router, _ = make({"name": "plain"}, {"name": "dbz", "format": "debezium"})
    event = router.build(BEGIN, Change(op="insert", relation=ORDERS, new=(b"1", b"a")), 0)
    assert router.shape("plain", event) is event
    shaped = router.shape("dbz", event)
    assert shaped is not None and shaped is not event
    assert orjson.loads(shaped.body)["op"] == "c"
    assert shaped.id == event.id and shaped.keys == event.keys


async def test_snapshot_rows_are_the_initial_snapshot_backfill_rows_incremental() -> None:
    router, tracker = make({"name": "dbz", "format": "debezium"})
    sent = capture(router)
    events = [router.build(BEGIN, Change(op="read", relation=ORDERS, new=(b"1", b"a")), 0)]
    await router.put_batch(BEGIN.commit_lsn, router.destinations["dbz"], events)
    value = orjson.loads(sent["dbz"][0].body)
    assert (value["op"], value["source"]["snapshot"]) == ("r", "true")
    assert tracker.pending_events("dbz") == 1
    backfill = router.shape("dbz", events[0])
    assert backfill is not None
    assert orjson.loads(backfill.body)["source"]["snapshot"] == "incremental"


@pytest.mark.parametrize("fmt", ["walrelay", "debezium"])
def test_transaction_metadata_begin_and_end_are_counted(fmt: str) -> None:
    router, tracker = make(
        {"name": "tx", "format": fmt, "transaction_metadata": True}, {"name": "plain"}
    )
    sent = capture(router)
    changes = [
        Change(op="insert", relation=ORDERS, new=(b"1", b"a")),
        Change(op="insert", relation=ORDERS, new=(b"2", b"b")),
        Change(op="insert", relation=ITEMS, new=(b"9",)),
    ]
    for seq, change in enumerate(changes):
        router.dispatch(router.build(BEGIN, change, seq), router.routes_of(change))
    assert router.end_transaction(BEGIN.commit_lsn, len(changes)) is None
    router.flush_counts(BEGIN.commit_lsn)
    # Three changes plus begin and end for "tx", only the changes for "plain": all counted.
    assert tracker.pending_events("tx") == 5
    assert tracker.pending_events("plain") == 3
    assert len(sent["plain"]) == 3
    begin, end = sent["tx"][-2:]
    assert (begin.id, end.id) == ("0000000000001000/0000000003", "0000000000001000/0000000004")
    assert (begin.op, end.op) == ("begin", "end")
    collections = [  # by name, as Debezium lists them
        {"data_collection": "public.items", "event_count": 1},
        {"data_collection": "public.orders", "event_count": 2},
    ]
    if fmt == "debezium":
        assert orjson.loads(begin.body) == {
            "status": "BEGIN",
            "id": "7:4096",
            "event_count": None,
            "data_collections": None,
            "ts_ms": 1704153600000,
        }
        value = orjson.loads(end.body)
        assert (value["status"], value["event_count"]) == ("END", 3)
        assert value["data_collections"] == collections
        assert end.rendering is not None and end.rendering.key == b'{"id":"7:4096"}'
        orders = [orjson.loads(e.body)["transaction"] for e in sent["tx"][:3]]
        assert orders == [
            {"id": "7:4096", "total_order": 1, "data_collection_order": 1},
            {"id": "7:4096", "total_order": 2, "data_collection_order": 2},
            {"id": "7:4096", "total_order": 3, "data_collection_order": 1},
        ]
    else:
        body = orjson.loads(end.body)
        assert (body["op"], body["event_count"]) == ("end", 3)
        assert body["data_collections"] == collections
        assert body["transaction_id"] == "7:4096"
    # A transaction that gave the destination nothing has no begin/end.
    assert router.end_transaction(0x2000, 0) is None
    assert len(sent["tx"]) == 5


def test_format_config_errors_name_the_destination_and_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"'f'.*binary mode needs headers"):
        DestinationConfig.model_validate(
            {
                "name": "f",
                "sink": {"type": "file", "path": "/tmp/x"},
                "format": "cloudevents",
                "cloudevents": {"mode": "binary"},
            }
        )
    with pytest.raises(ValidationError, match="cannot feed a postgres sink"):
        DestinationConfig.model_validate(
            {"name": "p", "sink": {"type": "postgres", "dsn": "dbname=x"}, "format": "debezium"}
        )
    with pytest.raises(ValidationError, match="renders its own payload"):
        DestinationConfig.model_validate(
            {
                "name": "o",
                "sink": {"type": "stdout"},
                "format": "debezium",
                "router": {"type": "outbox", "table": "public.outbox"},
            }
        )
