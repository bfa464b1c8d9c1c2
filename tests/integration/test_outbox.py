"""Issue 6: the transactional outbox end to end, against a real PostgreSQL (and Kafka)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from tests.integration.support import execute, read_jsonl, running_engine, wait_for
from walrelay.cli import main
from walrelay.config import Config, parse_config
from walrelay.outbox import (
    NotInTransaction,
    OutboxTable,
    init_outbox,
    maintain,
    publish,
    publish_message,
)
from walrelay.outbox.partitions import partition_statement, utc_today

PUB = "walrelay_outbox"
OUTBOX = OutboxTable()


def make(
    dsn: str,
    destinations: list[dict[str, Any]],
    *,
    tables: list[str] | None = None,
    source: dict[str, Any] | None = None,
    **top: Any,
) -> Config:
    src: dict[str, Any] = {"dsn": dsn, "tables": tables or ["public.outbox"], "publication": PUB}
    src.update({"status_interval": 1, **(source or {})})
    doc: dict[str, Any] = {
        "source": src,
        "destinations": destinations,
        "shutdown_timeout": 10,
        "http": {"enabled": False},
        "monitor": {"enabled": False},
        "heartbeat": {"enabled": False},
    }
    doc.update(top)
    return parse_config(doc, "(test)")


@contextlib.asynccontextmanager
async def aconnect(dsn: str, **kw: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(dsn, **kw)
    async with conn:
        yield conn


async def init(dsn: str, days_ahead: int = 1) -> None:
    async with aconnect(dsn, autocommit=True) as conn:
        await init_outbox(conn, OUTBOX, PUB, days_ahead=days_ahead)


def one(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def partitions(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = 'public.outbox'::regclass"
        ).fetchall()
    return {r[0] for r in rows}


def table_exists(dsn: str, name: str) -> bool:
    return bool(one(dsn, "select to_regclass(%s) is not null", (name,)))


# ------------------------------------------------------------------------- init


def test_init_is_idempotent_and_dry_run_changes_nothing(db: str) -> None:
    runner = CliRunner()
    dry = runner.invoke(main, ["outbox", "init", "--dry-run", "--days-ahead", "2"])
    assert dry.exit_code == 0, dry.output
    assert "PARTITION BY RANGE (created_at)" in dry.output
    assert 'CREATE PUBLICATION "walrelay_outbox" FOR TABLE "public"."outbox"' in dry.output

    dry = runner.invoke(main, ["outbox", "init", "--dsn", db, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "CREATE TABLE IF NOT EXISTS" in dry.output
    assert not table_exists(db, "public.outbox")  # nothing ran

    first = runner.invoke(main, ["outbox", "init", "--dsn", db, "--days-ahead", "3"])
    assert first.exit_code == 0, first.output
    today = utc_today()
    assert partitions(db) == {OUTBOX.partition_name(today + timedelta(days=i)) for i in range(4)}
    assert one(db, "select relkind from pg_class where oid = 'public.outbox'::regclass") == "p"
    assert one(db, "select relreplident from pg_class where oid = 'public.outbox'::regclass") == "d"
    assert one(db, "select pubviaroot from pg_publication where pubname = %s", (PUB,)) is True
    with psycopg.connect(db, autocommit=True) as conn:
        published = conn.execute(
            "select schemaname, tablename from pg_publication_tables where pubname = %s", (PUB,)
        ).fetchall()
    assert published == [("public", "outbox")]  # that table only

    again = runner.invoke(main, ["outbox", "init", "--dsn", db, "--days-ahead", "3"])
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output

    other = runner.invoke(
        main, ["outbox", "init", "--dsn", db, "--schema", "app", "--table", "events"]
    )
    assert other.exit_code == 2 and "does not publish app.events" in other.output


# ------------------------------------------------------------------------- publish + router


def order_tx_statements(order_id: int) -> str:
    return f"insert into orders values ({order_id}, 9.90)"


async def write_orders(db: str, *, rollback_id: int = 99) -> list[tuple[str, str]]:
    """Application transactions through every client; returns (topic, key) expected in order."""
    async with aconnect(db) as app:
        # psycopg 3, async: one order and its event, committed together
        async with app.transaction():
            await app.execute(order_tx_statements(42))
            await publish(app, "order", 42, "OrderCreated", {"order": 42, "total": "9.90"})
        # rolled back: neither the order nor any event (row or table-less) exists
        async with app.transaction():
            await app.execute(order_tx_statements(rollback_id))
            await publish(app, "order", rollback_id, "OrderCreated", {"order": rollback_id})
            await publish_message(app, "order", rollback_id, "OrderCreated", {"x": 1})
            raise psycopg.Rollback()
    # psycopg 3, sync, autocommit off: the caller commits
    with psycopg.connect(db) as sync_app:
        sync_app.execute(order_tx_statements(43))
        publish(sync_app, "order", "43", "OrderCreated", {"order": 43, "lines": [1, 2]})
        sync_app.commit()
    # psycopg2
    import psycopg2

    pg2 = psycopg2.connect(db)
    try:
        with pg2.cursor() as cur:
            cur.execute(order_tx_statements(7))
        publish(pg2, "invoice", 7, "InvoiceSent", {"invoice": 7})
        pg2.commit()
    finally:
        pg2.close()
    # table-less: a transactional logical message, routed the same way
    async with aconnect(db) as app, app.transaction():
        await app.execute(order_tx_statements(44))
        await publish_message(app, "order", 44, "OrderCreated", {"order": 44})
    return [
        ("order.events", "42"),
        ("order.events", "43"),
        ("invoice.events", "7"),
        ("order.events", "44"),
    ]


async def write_aggregate_history(db: str, aggregate: str, steps: int) -> list[dict[str, Any]]:
    """``steps`` more events of one aggregate, one transaction each; their payloads in
    commit order (a sink must deliver them in that order: one key)."""
    payloads = [{"order": int(aggregate), "step": i} for i in range(1, steps + 1)]
    async with aconnect(db) as app:
        for payload in payloads:
            async with app.transaction():
                await publish(app, "order", aggregate, "OrderUpdated", payload)
    return payloads


EXPECTED_PAYLOADS = {
    "42": {"order": 42, "total": "9.90"},
    "43": {"order": 43, "lines": [1, 2]},
    "7": {"invoice": 7},
    "44": {"order": 44},
}


async def test_outbox_events_are_routed_once_to_the_file_sink(db: str, tmp_path: Path) -> None:
    await init(db)
    execute(db, "create table orders (id int primary key, total numeric)")
    routed = tmp_path / "routed.jsonl"
    raw = tmp_path / "raw.jsonl"
    config = make(
        db,
        [
            {
                "name": "events",
                "sink": {"type": "file", "path": str(routed)},
                "router": {"type": "outbox"},
            },
            {"name": "raw", "sink": {"type": "file", "path": str(raw)}},
        ],
    )
    async with running_engine(config):
        expected = await write_orders(db)
        await wait_for(lambda: len(read_jsonl(routed)) >= 4, what="4 routed events")
    events = read_jsonl(routed)
    assert [(e["topic"], e["key"]) for e in events] == expected
    assert len({e["id"] for e in events}) == 4  # once each
    for e in events:
        assert e["payload"] == EXPECTED_PAYLOADS[e["key"]]  # JSON, not a string
        assert e["headers"]["event_type"] in ("OrderCreated", "InvoiceSent")
        assert e["tombstone"] is False
    assert [e["op"] for e in events] == ["insert", "insert", "insert", "message"]
    assert "outbox_id" in events[0]["headers"] and "outbox_id" not in events[3]["headers"]
    # The same changes without a router: the raw outbox rows and the raw message.
    assert [e["op"] for e in read_jsonl(raw)] == ["insert", "insert", "insert", "message"]
    assert one(db, "select count(*) from orders") == 4  # 99 was rolled back


async def test_publish_refuses_autocommit_outside_a_transaction(db: str) -> None:
    await init(db)
    async with aconnect(db, autocommit=True) as conn:
        with pytest.raises(NotInTransaction):
            await publish(conn, "order", 1, "E", {})
        with pytest.raises(NotInTransaction):
            await publish_message(conn, "order", 1, "E", {})
        await publish(conn, "order", 1, "E", {}, standalone=True)
        async with conn.transaction():
            await publish(conn, "order", 2, "E", {})
    import psycopg2

    pg2 = psycopg2.connect(db)
    try:
        pg2.autocommit = True
        with pytest.raises(NotInTransaction):
            publish(pg2, "order", 3, "E", {})
    finally:
        pg2.close()
    assert one(db, "select count(*) from outbox") == 2


# ------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="module")
def kafka() -> Iterator[Any]:
    from walrelay.testing.servers import KafkaServer

    with KafkaServer() as server:
        yield server


def consume(bootstrap: str, topics: list[str], want: int, timeout: float = 30.0) -> list[Any]:
    import time

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    out: list[Any] = []
    try:
        consumer.subscribe(topics)
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if len(out) >= want:
                    quiet_until = quiet_until or time.monotonic() + 2.0
                    if time.monotonic() >= quiet_until:
                        break  # 2 s without more: nothing else (no duplicates) is coming
                continue
            if msg.error():
                continue
            out.append(msg)
            quiet_until = None
    finally:
        consumer.close()
    return out


@pytest.mark.servers
async def test_outbox_events_arrive_once_at_kafka_on_routed_topics(db: str, kafka: Any) -> None:
    await init(db)
    execute(db, "create table orders (id int primary key, total numeric)")
    prefix = f"ob{uuid.uuid4().hex[:8]}"
    config = make(
        db,
        [
            {
                "name": "kafka",
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": kafka.bootstrap,
                    "prefix": prefix,
                    "checkpoint_topic": f"{prefix}.checkpoints",
                },
                "router": {"type": "outbox", "topic": prefix + ".{routed_by}.events"},
            }
        ],
    )
    async with running_engine(config) as engine:
        expected = await write_orders(db)
        await wait_for(
            lambda: engine.tracker.pending_events() == 0 and engine.stats.events_in >= 4,
            within=60,
            what="the events delivered to Kafka",
        )
    topics = [f"{prefix}.order.events", f"{prefix}.invoice.events"]
    messages = await _in_thread(consume, kafka.bootstrap, topics, 4)
    got = sorted(
        ((m.topic().removeprefix(prefix + "."), m.key().decode()) for m in messages),
        key=lambda tk: [k for _, k in expected].index(tk[1]),
    )
    assert got == expected  # each once, on its routed topic, key = aggregate_id
    for m in messages:
        key = m.key().decode()
        assert orjson.loads(m.value()) == EXPECTED_PAYLOADS[key]  # the payload as JSON
        headers = {k: v.decode() for k, v in m.headers() or []}
        assert headers["event_type"] in ("OrderCreated", "InvoiceSent")
        assert headers["aggregate_type"] in ("order", "invoice")
    # The transactional Kafka sink delivers in id order: 42, 43, 44 in commit order
    orders = [m.key().decode() for m in messages if m.topic().endswith(".order.events")]
    assert orders == ["42", "43", "44"]


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


# ------------------------------------------------------------------------- partition upkeep


def add_partition(dsn: str, day: date) -> None:
    execute(dsn, partition_statement(OUTBOX, day).as_string(None))


def insert_at(dsn: str, day: date, aggregate_id: str) -> None:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) "
            "values ('order', %s, 'Old', '{}', %s)",
            (aggregate_id, at),
        )


async def run_maintain(dsn: str, **kw: Any) -> Any:
    async with aconnect(dsn, autocommit=True) as conn:
        return await maintain(
            conn, OUTBOX, slots=["walrelay"], days_ahead=3, retention_days=7, **kw
        )


async def test_partition_upkeep_drops_only_confirmed_partitions(db: str, tmp_path: Path) -> None:
    await init(db, days_ahead=1)
    today = utc_today()
    old, older = today - timedelta(days=9), today - timedelta(days=10)
    add_partition(db, older)
    add_partition(db, old)
    raw = tmp_path / "raw.jsonl"
    dest = [{"name": "raw", "sink": {"type": "file", "path": str(raw)}}]

    # 1. walrelay running: an expired partition whose event was delivered is dropped.
    async with running_engine(make(db, dest)):
        insert_at(db, older, "a")
        await wait_for(lambda: len(read_jsonl(raw)) >= 1, what="the old event")
        report = await run_maintain(db, confirm_wait=20)
    assert OUTBOX.partition_name(older) in report.dropped, report.lines()
    assert not table_exists(db, "public." + OUTBOX.partition_name(older))
    # future partitions: today and the next 3 days
    assert {OUTBOX.partition_name(today + timedelta(days=i)) for i in range(4)} <= partitions(db)
    # the other expired partition was empty and confirmed too
    assert OUTBOX.partition_name(old) in report.dropped
    add_partition(db, old)

    # 2. walrelay stopped: an event in an expired partition is not confirmed: kept.
    insert_at(db, old, "b")
    report = await run_maintain(db, confirm_wait=1)
    name = OUTBOX.partition_name(old)
    assert [n for n, _ in report.detached] == [name] and report.dropped == []
    assert [n for n, _ in report.kept] == [name]
    assert "not yet delivered" in report.kept[0][1]
    assert table_exists(db, "public." + name)  # detached, rows kept
    assert one(db, f"select count(*) from {name}") == 1
    assert name not in partitions(db)

    # 3. walrelay again, doing upkeep itself: delivers the event, then drops the partition.
    config = make(
        db,
        dest,
        outbox={"interval": 0.5, "days_ahead": 3, "retention_days": 7, "confirm_wait": 5},
    )
    async with running_engine(config):
        await wait_for(lambda: len(read_jsonl(raw)) >= 2, what="the kept partition's event")
        await wait_for(
            lambda: not table_exists(db, "public." + name),
            within=30,
            what="the engine's upkeep to drop the delivered partition",
        )
    events = read_jsonl(raw)
    assert [(e["op"], e["record"]["aggregate_id"]) for e in events] == [
        ("insert", "a"),
        ("insert", "b"),
    ]
    assert not any(e["op"] == "delete" for e in events)  # DDL only: no DELETE in the stream

    # The command line does the same upkeep (in a thread: it runs its own event loop).
    runner = CliRunner()
    args = ["outbox", "maintain", "--dsn", db, "--slot", "walrelay", "--days-ahead", "5"]
    dry = await asyncio.to_thread(runner.invoke, main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"-- would: created {OUTBOX.partition_name(today + timedelta(days=5))}" in dry.output
    done = await asyncio.to_thread(runner.invoke, main, args)
    assert done.exit_code == 0, done.output
    assert OUTBOX.partition_name(today + timedelta(days=5)) in partitions(db)
