"""Schema and slot events while walrelay runs: followed by OID, never silent.

A renamed table keeps its destinations; a table dropped or removed from the
publication, a publication dropped, a slot dropped or invalidated: a log line
naming the object and what happens next, a page-level alert, then the
configured action (walrelay.engine.watch, walrelay.engine.core).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.support import (
    count_lines,
    execute,
    make_config,
    read_jsonl,
    running_engine,
    wait_for,
)
from walrelay.engine import Engine
from walrelay.errors import PublicationLost, SlotLost
from walrelay.monitor.thresholds import Severity
from walrelay.testing.pgcluster import PgCluster, start_cluster


def file_dest(path: Path, **extra: object) -> dict[str, object]:
    return {"name": "file", "sink": {"type": "file", "path": str(path)}, **extra}


def paged(engine: Engine, rule: str, obj: str) -> bool:
    alert = engine.services.alerts.get(rule, obj)
    return alert is not None and alert.severity is Severity.PAGE


async def test_renamed_table_keeps_its_destinations(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    execute(
        db,
        "create table t3 (id int primary key, v text)",
        "create table other (id int primary key)",
    )
    out = tmp_path / "t3.jsonl"
    config = make_config(db, ["public.t3", "public.other"], [file_dest(out, tables=["public.t3"])])
    with caplog.at_level(logging.WARNING):
        async with running_engine(config):
            execute(db, "insert into t3 values (1, 'before')")
            await wait_for(lambda: count_lines(out) >= 1, what="the change before the rename")
            execute(
                db,
                "alter table t3 rename to t3_new",
                "insert into t3_new values (2, 'after')",
                "update t3_new set v = 'after too' where id = 1",
            )
            await wait_for(lambda: count_lines(out) >= 3, what="changes after the rename")
        # A restart with the config still naming public.t3 follows the recorded OID.
        execute(db, "insert into t3_new values (3, 'while down')")
        async with running_engine(config):
            execute(db, "delete from t3_new where id = 2")
            await wait_for(lambda: count_lines(out) >= 5, what="changes after a restart")
    events = read_jsonl(out)
    assert [(e["table"], e["op"]) for e in events] == [
        ("public.t3", "insert"),
        ("public.t3_new", "insert"),
        ("public.t3_new", "update"),
        ("public.t3_new", "insert"),
        ("public.t3_new", "delete"),
    ]
    renames = [
        (r.name, r.message) for r in caplog.records if "renamed to public.t3_new" in r.message
    ]
    # Once while running, once at the restart.
    assert [name for name, _ in renames] == ["walrelay.pipeline.router", "walrelay.source.slot"]
    assert all("table public.t3 " in message for _, message in renames)


async def test_table_dropped_or_unpublished_pages_and_others_go_on(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    execute(
        db,
        "create table a (id int primary key)",
        "create table b (id int primary key)",
        "create table c (id int primary key)",
    )
    out = tmp_path / "events.jsonl"
    config = make_config(
        db, ["public.a", "public.b", "public.c"], [file_dest(out)], watch_interval=0.2
    )
    with caplog.at_level(logging.WARNING):
        async with running_engine(config) as engine:
            await wait_for(lambda: engine.streaming, what="streaming")
            execute(db, "drop table a", "alter publication walrelay_pub drop table b")
            await wait_for(
                lambda: (
                    paged(engine, "table_dropped", "table public.a")
                    and paged(engine, "table_unpublished", "table public.b")
                ),
                what="page alerts for the dropped and the unpublished table",
            )
            execute(db, "insert into b values (1)", "insert into c values (1)")
            await wait_for(lambda: count_lines(out) >= 1, what="the other table's change")
            # Published again: the alert resolves, its changes flow again.
            execute(db, "alter publication walrelay_pub add table b")
            await wait_for(
                lambda: engine.services.alerts.get("table_unpublished", "table public.b") is None,
                what="the unpublished alert to resolve",
            )
            execute(db, "insert into b values (2)")
            await wait_for(lambda: count_lines(out) >= 2, what="b's change after re-adding it")
    assert [e["table"] for e in read_jsonl(out)] == ["public.c", "public.b"]
    text = "\n".join(r.message for r in caplog.records)
    assert "table public.a (OID" in text and "was dropped" in text
    assert "streaming goes on" in text
    assert "removed from publication walrelay_pub" in text
    assert "ALTER PUBLICATION walrelay_pub ADD TABLE public.b" in text


async def test_publication_dropped_keeps_the_servers_message(db: str, tmp_path: Path) -> None:
    """No watch in time (a long interval): the walsender's error, which names
    the publication, reaches the user instead of 'no error details'."""
    execute(db, "create table t (id int primary key)")
    out = tmp_path / "events.jsonl"
    config = make_config(db, ["public.t"], [file_dest(out)], watch_interval=3600)
    engine = Engine(config)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.started.wait(), 60)
    await wait_for(lambda: engine.streaming, what="streaming")
    execute(db, "drop publication walrelay_pub", "insert into t values (1)")
    with pytest.raises(PublicationLost) as info:
        await asyncio.wait_for(task, 60)
    assert 'publication "walrelay_pub" does not exist' in info.value.message
    assert info.value.fix is not None and "CREATE PUBLICATION walrelay_pub" in info.value.fix
    assert info.value.exit_code == 3


async def test_publication_dropped_seen_by_the_watch(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key)")
    config = make_config(db, ["public.t"], [file_dest(tmp_path / "e.jsonl")], watch_interval=0.2)
    engine = Engine(config)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.started.wait(), 60)
    await wait_for(lambda: engine.streaming, what="streaming")
    execute(db, "drop publication walrelay_pub")
    with pytest.raises(PublicationLost) as info:
        await asyncio.wait_for(task, 60)
    assert "publication walrelay_pub was dropped" in str(info.value)
    alert = engine.services.alerts.get("publication_lost", "walrelay_pub")
    assert alert is not None and alert.severity is Severity.PAGE


def drop_active_slot(dsn: str, slot: str) -> None:
    """What an operator does to drop a slot in use: end its walsender, drop it
    before the consumer reconnects."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            conn.execute(
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = %s and active_pid is not null",
                (slot,),
            )
            try:
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                continue
    raise AssertionError(f"could not drop slot {slot}")


async def test_slot_dropped_while_running_stop(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    execute(db, "create table t (id int primary key)")
    config = make_config(db, ["public.t"], [file_dest(tmp_path / "e.jsonl")])
    engine = Engine(config)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.started.wait(), 60)
    await wait_for(lambda: engine.streaming, what="streaming")
    with caplog.at_level(logging.CRITICAL, logger="walrelay.engine"):
        drop_active_slot(db, "walrelay")
        with pytest.raises(SlotLost) as info:
            await asyncio.wait_for(task, 60)
    assert "replication slot walrelay was dropped" in info.value.message
    assert info.value.exit_code == 3
    alert = engine.services.alerts.get("slot_lost", "walrelay")
    assert alert is not None and alert.severity is Severity.PAGE
    assert any("on_slot_lost: stop: walrelay stops" in r.message for r in caplog.records)


async def test_slot_dropped_while_running_resnapshot(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key)", "insert into t values (1), (2)")
    out = tmp_path / "e.jsonl"
    config = make_config(
        db,
        ["public.t"],
        [file_dest(out, snapshot="initial")],
        on_slot_lost="resnapshot",
    )
    async with running_engine(config) as engine:
        await wait_for(lambda: count_lines(out) >= 2, what="the initial snapshot")
        await wait_for(lambda: engine.streaming, what="streaming")
        drop_active_slot(db, "walrelay")
        # The slot comes back: a truncate, the rows again, then the stream.
        await wait_for(lambda: count_lines(out) >= 5, what="the re-snapshot")
        execute(db, "insert into t values (3)")
        await wait_for(lambda: count_lines(out) >= 6, what="a change after the re-snapshot")
    ops = [e["op"] for e in read_jsonl(out)]
    assert ops == ["read", "read", "truncate", "read", "read", "insert"]


@pytest.fixture
def tiny_wal_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster(
        {"max_slot_wal_keep_size": "'1MB'", "wal_keep_size": "0", "max_wal_size": "64MB"}
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def invalidate_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(6):
            conn.execute(
                "insert into filler select g, repeat('x', 500) from generate_series(1, 5000) g"
            )
            conn.execute("truncate filler")
            conn.execute("select pg_switch_wal()")
            conn.execute("checkpoint")
            row = conn.execute(
                "select wal_status from pg_replication_slots where slot_name = %s", (slot,)
            ).fetchone()
            if row is None or row[0] == "lost":
                return
    raise AssertionError(f"slot {slot} was not invalidated")


async def test_slot_invalidated_while_running_resnapshot(
    tiny_wal_cluster: PgCluster, tmp_path: Path
) -> None:
    """The slot does not move (nothing published changes, confirm_idle off), so
    filling WAL invalidates it under the running engine: page, then a new slot
    and a new snapshot."""
    dsn = tiny_wal_cluster.dsn()
    execute(
        dsn,
        "create table t (id int primary key)",
        "create table filler (id int, pad text)",
        "insert into t values (1)",
    )
    out = tmp_path / "e.jsonl"
    config = make_config(
        dsn,
        ["public.t"],
        [file_dest(out, snapshot="initial")],
        on_slot_lost="resnapshot",
        confirm_idle=False,
        watch_interval=0.2,
    )
    async with running_engine(config) as engine:
        await wait_for(lambda: count_lines(out) >= 1, what="the initial snapshot")
        await wait_for(lambda: engine.streaming, what="streaming")
        first = engine.slot
        invalidate_slot(dsn, "walrelay")
        await wait_for(lambda: engine.slot is not first and engine.streaming, what="a new slot")
        assert first.services.alerts.get("slot_lost", "walrelay") is not None
        execute(dsn, "insert into t values (2)")
        await wait_for(lambda: count_lines(out) >= 4, what="the re-snapshot and a change")
    assert [e["op"] for e in read_jsonl(out)] == ["read", "truncate", "read", "insert"]
