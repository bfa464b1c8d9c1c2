"""Delivery ledgers against real Redis and PostgreSQL, alone and in the engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.factories import make_event as ev
from tests.integration.support import (
    WebhookReceiver,
    execute,
    make_config,
    running_engine,
    slot_state,
    wait_for,
)
from walrelay.pipeline.ledger import LedgerHook, LedgerUnavailable, PostgresLedger, RedisLedger
from walrelay.pipeline.scheduler import Destination
from walrelay.testing.servers import RedisServer

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def commandstats(server: RedisServer) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_redis_ledger_check_record_trim(redis_server: RedisServer) -> None:
    ledger = RedisLedger(redis_server.url)
    await ledger.open()
    try:
        batch = [ev(100, i) for i in range(50)] + [ev(300)]
        assert await ledger.delivered("d", batch) == set()
        await ledger.record("d", batch)
        assert await ledger.delivered("d", [*batch, ev(400)]) == {e.id for e in batch}
        assert await ledger.delivered("other", batch) == set()  # per destination
        await ledger.record("d", [ev(400)], trim_below=300)
        assert await ledger.delivered("d", [*batch, ev(400)]) == {ev(300).id, ev(400).id}
        stats = commandstats(redis_server)
        # One command per check and per record (plus the trim in the same pipeline).
        assert stats["zmscore"] == 4 and stats["zadd"] == 2 and stats["zremrangebyscore"] == 1
    finally:
        await ledger.close()


async def test_redis_ledger_outage_and_recovery(redis_server: RedisServer) -> None:
    ledger = RedisLedger(redis_server.url, timeout=1.0)
    await ledger.open()
    try:
        await ledger.record("d", [ev(100)])
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="ledger redis://"):
            await ledger.delivered("d", [ev(100)])
        with pytest.raises(LedgerUnavailable):
            await ledger.record("d", [ev(200)])
        assert time.monotonic() - started < 5
        await redis_server.arestart()
        # AOF: what was recorded before the crash is still there.
        assert await ledger.delivered("d", [ev(100), ev(200)]) == {ev(100).id}
    finally:
        await ledger.close()


async def test_redis_ledger_open_does_not_fail_when_down() -> None:
    ledger = RedisLedger("redis://127.0.0.1:1/0", timeout=0.5)
    await ledger.open()  # logs a warning; delivery will wait
    with pytest.raises(LedgerUnavailable):
        await ledger.delivered("d", [ev(1)])
    await ledger.close()


async def test_postgres_ledger_check_record_trim(db: str) -> None:
    ledger = PostgresLedger(db, schema="walrelay")
    await ledger.open()
    try:
        batch = [ev(100, i) for i in range(20)] + [ev(0x1_0000_0300)]
        await ledger.record("d", batch)
        await ledger.record("d", batch[:5])  # idempotent
        assert await ledger.delivered("d", [*batch, ev(400)]) == {e.id for e in batch}
        await ledger.record("d", [ev(0x2_0000_0000)], trim_below=0x1_0000_0300)
        assert await ledger.delivered("d", batch) == {ev(0x1_0000_0300).id}
    finally:
        await ledger.close()
    with psycopg.connect(db) as conn:
        versions = [r[0] for r in conn.execute("select version from walrelay.schema_version")]
        assert 3 in versions
        count = conn.execute("select count(*) from walrelay.ledger").fetchone()
        assert count == (2,)


async def test_postgres_ledger_check_reads_only_the_batch_lsn_range(db: str) -> None:
    """A check looks up its ids by commit LSN range: on a never-analyzed ledger
    of many rows, ``event_id = any(..)`` alone made the planner read every row
    of the destination (0.9 s a check at 60,000 rows)."""
    ledger = PostgresLedger(db, schema="walrelay")
    await ledger.open()
    try:
        older = [ev(0x1000 + i) for i in range(20_000)]
        await ledger.record("d", older)
        batch = [ev(0x9000 + i) for i in range(200)]
        await ledger.record("d", batch[:100])
        assert await ledger.delivered("d", batch) == {e.id for e in batch[:100]}
    finally:
        await ledger.close()
    with psycopg.connect(db, autocommit=True) as conn:
        from walrelay.state.ledger import LedgerTable

        query = LedgerTable("walrelay")._delivered.as_string(conn)
        lsns = [f"0/{0x9000:X}", f"0/{0x9000 + 199:X}"]
        ids = [e.id for e in batch]
        plan = conn.execute("explain (analyze, format json) " + query, ("d", *lsns, ids)).fetchone()
        assert plan is not None
        read = _rows_read(plan[0][0]["Plan"])
        assert read <= 1_000, f"the check read {read} rows for a batch of 200"


def _rows_read(node: dict[str, Any]) -> int:
    """Rows a plan produced or removed by a filter, over all its nodes."""
    own = int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
    return own + sum(_rows_read(child) for child in node.get("Plans", []))


async def test_postgres_ledger_unreachable() -> None:
    ledger = PostgresLedger("host=127.0.0.1 port=1 dbname=x connect_timeout=1")
    await ledger.open()  # does not raise
    with pytest.raises(LedgerUnavailable, match="cannot connect"):
        await ledger.delivered("d", [ev(1)])
    await ledger.close()


def hook_dest(url: str, ledger: dict[str, str] | None = None) -> dict[str, object]:
    dest: dict[str, object] = {
        "name": "hook",
        "sink": {"type": "webhook", "url": url, "secret_env": "WALRELAY_TEST_SECRET"},
    }
    if ledger is not None:
        dest["ledger"] = ledger
    return dest


async def test_engine_pauses_while_redis_is_down(
    db: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_SECRET", SECRET)
    execute(db, "create table t (id int primary key)")
    async with WebhookReceiver(SECRET) as hook:
        config = make_config(
            db,
            ["public.t"],
            [hook_dest(hook.url, {"type": "redis", "url": redis_server.url, "timeout": "1s"})],
        )
        async with running_engine(config) as engine:
            execute(db, "insert into t select generate_series(1, 100)")
            await wait_for(lambda: len(hook.ids) >= 100, what="first 100")
            await redis_server.astop(remove=False)
            confirmed = slot_state(db, "walrelay")["confirmed"]
            execute(db, "insert into t select generate_series(101, 200)")
            dest = engine.destinations["hook"]
            sink = ledger_of(dest)
            await wait_for(lambda: sink.check_retries >= 2, what="checks failing")
            assert sink.ledger_down_since is not None
            assert len(hook.ids) == 100, "sent while the ledger was down"
            assert dest.in_flight > 0  # paused, in flight
            # Not a delivery failure: nothing counted as failed, nothing parked.
            assert dest.failures_total == 0 and dest.parked_total == 0
            stuck = engine.tracker.confirmed
            await redis_server.arestart()
            await wait_for(lambda: len(hook.ids) >= 200, within=30, what="all 200 after Redis")
            assert sink.ledger_down_since is None
            await wait_for(lambda: engine.tracker.confirmed > stuck, what="the LSN to move on")
        assert slot_state(db, "walrelay")["confirmed"] > confirmed
    assert sorted(e["record"]["id"] for e in hook.received) == list(range(1, 201))
    assert len(set(hook.ids)) == 200


async def test_engine_drops_a_replay_through_the_postgres_ledger(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots at the same position: the second one replays every event with the
    same ids; the (default) PostgreSQL ledger drops all of them.

    Ledger entries are namespaced by slot (two slots reading the same WAL must
    not take each other's ids), so the test hands the first slot's entries to
    the second, as if it were the same slot replaying after a crash."""
    monkeypatch.setenv("WALRELAY_TEST_SECRET", SECRET)
    execute(
        db,
        "create table t (id int primary key, v int)",
        "create publication walrelay_pub for table t",
        "select pg_create_logical_replication_slot('first', 'pgoutput')",
        "select pg_create_logical_replication_slot('second', 'pgoutput')",
        "insert into t select g, 0 from generate_series(1, 300) g",
        "update t set v = 1 where id <= 100",
    )
    async with WebhookReceiver(SECRET) as hook:
        first = make_config(db, ["public.t"], [hook_dest(hook.url)], slot="first")
        async with running_engine(first):
            await wait_for(lambda: len(hook.ids) >= 400, what="400 events")
        execute(
            db,
            "update walrelay.ledger set destination = 'second/hook' "
            "where destination = 'first/hook'",
        )
        second = make_config(db, ["public.t"], [hook_dest(hook.url)], slot="second")
        async with running_engine(second) as engine:
            await wait_for(
                lambda: engine.destinations["hook"].delivered_total >= 400, what="the replay"
            )
            assert ledger_of(engine.destinations["hook"]).replays_dropped == 400
    assert len(hook.ids) == len(set(hook.ids)) == 400


def ledger_of(destination: Destination) -> LedgerHook:
    hooks = [h for h in destination.hooks if isinstance(h, LedgerHook)]
    assert len(hooks) == 1, f"{destination.name}: expected one ledger hook, got {hooks}"
    return hooks[0]
