"""Initial snapshots (issue 8): copy and stream meet exactly; lost-slot recovery."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from walrelay.errors import SlotLost
from walrelay.model import parse_event_id
from walrelay.sinks.memory import MemorySink
from walrelay.testing.pgcluster import PgCluster, start_cluster


def file_dest(path: Path, **extra: object) -> dict[str, object]:
    return {"name": "file", "sink": {"type": "file", "path": str(path)}, **extra}


def replay(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What a consumer applying the events in file order ends with."""
    state: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["op"] == "truncate":
            state.clear()
        elif e["op"] == "delete":
            state.pop(e["key"]["id"], None)
        elif e["op"] in ("read", "insert", "update"):
            state[e["key"]["id"]] = e["record"]
    return state


def source_rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select id, version, v from t").fetchall()
    return {r[0]: {"id": r[0], "version": r[1], "v": r[2]} for r in rows}


class Writer(threading.Thread):
    """Updates random keys (version + 1), inserts new keys, deletes a few."""

    def __init__(self, dsn: str, n: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.n = n
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(8)
        next_id = self.n + 1
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    with conn.transaction():
                        for _ in range(5):
                            r = rng.random()
                            if r < 0.8:
                                conn.execute(
                                    "update t set version = version + 1, v = md5(random()::text) "
                                    "where id = %s",
                                    (rng.randint(1, self.n),),
                                )
                            elif r < 0.93:
                                conn.execute(
                                    "insert into t (id, version, v) values (%s, 1, 'new')",
                                    (next_id,),
                                )
                                next_id += 1
                            else:
                                conn.execute(
                                    "delete from t where id = %s", (rng.randint(1, self.n),)
                                )
                    self.transactions += 1
        except BaseException as e:  # reported by the test
            self.error = e


def check_history(events: list[dict[str, Any]]) -> None:
    """Ids strictly increase; per key the snapshot row comes first and versions
    strictly increase (no change delivered before its key's read, no overlap)."""
    ids = [parse_event_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    last_version: dict[int, int] = {}
    seen_read: set[int] = set()
    seen_change: set[int] = set()
    for e in events:
        op = e["op"]
        if op == "read":
            k = e["key"]["id"]
            assert k not in seen_read, f"key {k}: two snapshot rows"
            assert k not in seen_change, f"key {k}: a change delivered before its snapshot row"
            seen_read.add(k)
            last_version[k] = e["record"]["version"]
        elif op in ("insert", "update"):
            k = e["key"]["id"]
            seen_change.add(k)
            v = e["record"]["version"]
            if k in last_version and op == "update":
                assert v > last_version[k], f"key {k}: version {v} after {last_version[k]}"
            last_version[k] = v
        elif op == "delete":
            k = e["key"]["id"]
            seen_change.add(k)
            last_version.pop(k, None)


async def test_initial_snapshot_500k_with_concurrent_writes(db: str, tmp_path: Path) -> None:
    n = 500_000
    out = tmp_path / "events.jsonl"
    execute(
        db,
        "create table t (id bigint primary key, version int not null, v text)",
        f"insert into t select g, 1, 'row ' || g from generate_series(1, {n}) g",
        "analyze t",
    )
    config = make_config(db, ["public.t"], [file_dest(out)], snapshot_workers=2)
    writer = Writer(db, n)
    writer.start()
    try:
        async with running_engine(config) as engine:
            await wait_for(
                lambda: (
                    "snapshot:public.t" in engine.progress
                    and engine.progress["snapshot:public.t"].state == "done"
                ),
                within=60,
                what="the snapshot read",
            )
            progress = engine.progress["snapshot:public.t"]
            assert progress.rows_done >= n * 0.98 and progress.rate > 0
            written = writer.transactions  # writes go on after the snapshot too
            await wait_for(
                lambda: writer.transactions >= written + 20, what="writes after the snapshot"
            )
            writer.stop.set()
            await asyncio.to_thread(writer.join, 30)
            assert writer.error is None, writer.error
            assert writer.transactions > 10
            expected = source_rows(db)
            await wait_for(
                lambda: count_lines(out) >= len(expected),
                within=120,
                interval=0.5,
                what="every row",
            )

            def caught_up() -> bool:
                return replay(read_jsonl(out)) == expected

            # Each check replays the whole file (500k rows): not every 20 ms.
            await wait_for(
                caught_up, within=120, interval=1.0, what="destination equal to the source"
            )
            status = engine.services.status()
            assert any(p["table"] == "public.t" for p in status["progress"])
    finally:
        writer.stop.set()
    events = read_jsonl(out)
    reads = [e for e in events if e["op"] == "read"]
    assert len(reads) >= n * 0.98  # rows deleted before the snapshot are not read
    check_history(events)


async def test_snapshot_never_and_snapshot_resumes_after_crash(db: str, tmp_path: Path) -> None:
    execute(
        db,
        "create table t (id bigint primary key, version int not null, v text)",
        "insert into t select g, 1, 'x' from generate_series(1, 100) g",
    )
    out_never = tmp_path / "never.jsonl"
    config = make_config(
        db, ["public.t"], [file_dest(out_never, snapshot="never")], slot="never_slot"
    )
    async with running_engine(config):
        execute(db, "update t set version = 2 where id = 1")
        await wait_for(lambda: count_lines(out_never) >= 1, what="the update")
    assert [e["op"] for e in read_jsonl(out_never)] == ["update"]

    # A snapshot that did not finish (state 'running') resumes on the same slot,
    # as backfills: the rows again, and the change made meanwhile from the slot.
    out = tmp_path / "events.jsonl"
    config = make_config(db, ["public.t"], [file_dest(out)], slot="snap_slot")
    async with running_engine(config):
        await wait_for(lambda: count_lines(out) >= 100, what="the snapshot")
    execute(db, "update walrelay.snapshots set status = 'running' where slot = 'snap_slot'")
    execute(db, "update t set version = 3 where id = 2")
    async with running_engine(config) as engine:
        await wait_for(lambda: count_lines(out) >= 201, what="the resumed snapshot")
        assert engine.source_info is not None and not engine.source_info.slot_created
    events = read_jsonl(out)
    assert [e["op"] for e in events].count("read") == 200
    assert [e["op"] for e in events].count("update") == 1
    assert replay(events) == source_rows(db)


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
        for _ in range(4):
            conn.execute(
                "insert into filler select g, repeat('x', 500) from generate_series(1, 5000) g"
            )
            conn.execute("truncate filler")
            conn.execute("select pg_switch_wal()")
            conn.execute("checkpoint")
            row = conn.execute(
                "select wal_status from pg_replication_slots where slot_name = %s", (slot,)
            ).fetchone()
            if row is not None and row[0] == "lost":
                return
    raise AssertionError(f"slot {slot} was not invalidated")


async def test_lost_slot_stop_and_resnapshot(tiny_wal_cluster: PgCluster, tmp_path: Path) -> None:
    dsn = tiny_wal_cluster.dsn()
    execute(
        dsn,
        "create table t (id bigint primary key, version int not null, v text)",
        "create table filler (id int, pad text)",
        "insert into t select g, 1, 'x' from generate_series(1, 1000) g",
    )
    out = tmp_path / "events.jsonl"
    config = make_config(dsn, ["public.t"], [file_dest(out)], on_slot_lost="resnapshot")
    async with running_engine(config):
        execute(dsn, "update t set version = 2 where id <= 10")
        await wait_for(lambda: count_lines(out) >= 1010, what="snapshot and updates")

    # While walrelay is down: changes, and the slot loses the WAL it needed.
    execute(
        dsn,
        "update t set version = version + 1 where id % 7 = 0",
        "delete from t where id % 11 = 0",
        "insert into t select g, 1, 'late' from generate_series(2001, 2100) g",
    )
    invalidate_slot(dsn, "walrelay")

    stop_config = make_config(dsn, ["public.t"], [file_dest(out)])
    with pytest.raises(SlotLost) as info:
        await Engine(stop_config).run()
    assert info.value.fix and "pg_drop_replication_slot" in info.value.fix

    async with running_engine(config) as engine:
        execute(dsn, "update t set version = version + 1 where id = 1")
        expected = source_rows(dsn)

        def caught_up() -> bool:
            return replay(read_jsonl(out)) == expected

        await wait_for(caught_up, within=60, what="destination equal to the source")
        assert engine.source_info is not None and engine.source_info.slot_created
    events = read_jsonl(out)
    ids = [parse_event_id(e["id"]) for e in events]
    assert ids == sorted(ids)
    assert [e["op"] for e in events].count("truncate") == 1  # the reset before the reload


def lock_holders(dsn: str, table: str) -> list[tuple[int, str, bool]]:
    """(pid, mode, granted) of every session's lock on ``table`` but this one's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select pid, mode, granted from pg_locks"
            " where relation = %s::regclass and pid <> pg_backend_pid()",
            (table,),
        ).fetchall()
    return [(int(r[0]), str(r[1]), bool(r[2])) for r in rows]


async def test_ddl_waiting_for_the_snapshot_locks_never_deadlocks_it(
    db: str, tmp_path: Path
) -> None:
    """A TRUNCATE queued behind the snapshot's ACCESS SHARE lock on a table not
    read yet must wait for the copy, not stop it: before the fix the reader
    that came to that table queued behind the TRUNCATE, which waited for the
    snapshot transaction, which waited for that reader."""
    execute(
        db,
        "create table a_big (id int primary key, v text)",
        "create table b_big (id int primary key, v text)",
        "create table c_small (id int primary key, v text)",
        "insert into a_big select g, repeat('a', 40) from generate_series(1, 15000) g",
        "insert into b_big select g, repeat('b', 40) from generate_series(1, 15000) g",
        "insert into c_small values (1, 'one'), (2, 'two'), (3, 'three')",
    )
    gate = asyncio.Event()

    async def held(_batch: object) -> None:
        await gate.wait()

    sink = MemorySink(delay=held)
    dest = {"name": "mem", "sink": {"type": "file", "path": str(tmp_path / "unused")}}
    # Small enough that the held sink stops both readers before the big tables
    # are read (the snapshot queue holds 16,000 rows; the buffer ~1,800 events).
    dest.update(buffer_bytes="1MiB")
    tables = ["public.a_big", "public.b_big", "public.c_small"]
    config = make_config(db, tables, [dest], snapshot_workers=2)
    async with running_engine(config, sink_factory=lambda _d: sink):
        await wait_for(
            lambda: any(granted for _, _, granted in lock_holders(db, "c_small")),
            what="the snapshot's lock on c_small",
        )
        truncate = asyncio.create_task(asyncio.to_thread(execute, db, "truncate c_small"))
        await wait_for(
            lambda: any(not granted for _, _, granted in lock_holders(db, "c_small")),
            what="the TRUNCATE waiting for the snapshot",
        )
        gate.set()

        def done() -> bool:
            return any(e.op == "truncate" for e in sink.delivered)

        await wait_for(done, within=60, what="the snapshot and then the TRUNCATE delivered")
        await truncate
    small = [e.op for e in sink.delivered if e.op == "truncate" or e.table == "public.c_small"]
    assert small == ["read", "read", "read", "truncate"]
    assert sum(e.op == "read" for e in sink.delivered) == 30003
