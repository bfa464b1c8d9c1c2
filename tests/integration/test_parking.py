"""Parking end to end: failed deliveries parked in PostgreSQL, against a real cluster.

The receiver runs in the test process; walrelay runs in-process (``running_engine``)
or, for the SIGKILL test, as ``python -m walrelay run``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web

from tests.integration.support import (
    WebhookReceiver,
    current_lsn,
    execute,
    running_engine,
    slot_state,
    wait_for,
    walrelay_process,
    write_config_file,
)
from walrelay.config import Config, parse_config
from walrelay.pipeline.parking import PAUSED_MESSAGE

SECRET_ENV = "WALRELAY_TEST_SECRET"


def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "whsec_" + base64.b64encode(b"parked-events-test-secret-32byte").decode()
    monkeypatch.setenv(SECRET_ENV, value)
    return value


class Receiver(WebhookReceiver):
    """The webhook peer, plus: a status per event (e.g. 422 for one key), and the
    time of every request per event id."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.status_for: Callable[[dict[str, Any]], int | None] | None = None
        self.attempts: dict[str, list[float]] = defaultdict(list)
        # An event for which ``gate`` returns an asyncio.Event waits for it (the
        # attempt stays in flight); ``held`` is set when one does.
        self.gate: Callable[[dict[str, Any]], asyncio.Event | None] | None = None
        self.held = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = orjson.loads(body)
        self.attempts[event["id"]].append(time.time())
        gate = self.gate(event) if self.gate is not None else None
        if gate is not None:
            self.held.set()
            await gate.wait()
        if self.status_for is not None:
            status = self.status_for(event)
            if status is not None:
                self.requests += 1
                return web.Response(status=status, text="rejected by the test")
        return await super()._handle(request)

    def versions(self, key: int) -> list[int]:
        return [e["record"]["version"] for e in self.received if e["key"]["id"] == key]


def config_dict(dsn: str, url: str, **parking: Any) -> dict[str, Any]:
    return {
        "source": {"dsn": dsn, "tables": ["public.accounts"], "status_interval": 0.2},
        "destinations": [
            {
                "name": "hook",
                "max_in_flight": 16,
                "retry": {"initial": 0.02, "max": 0.05},
                "parking": {
                    "park_after": 2,
                    "backoff": {"initial": 0.2, "multiplier": 2, "max": 1},
                    **parking,
                },
                "sink": {"type": "webhook", "url": url, "secret_env": SECRET_ENV},
            }
        ],
        "shutdown_timeout": 10,
    }


def config(dsn: str, url: str, **parking: Any) -> Config:
    return parse_config(config_dict(dsn, url, **parking), "(test)")


def parked_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "select event_id, keys, attempts, dead, skipped, permanent, last_error,"
            " extract(epoch from next_attempt_at)::float8 as next_at"
            " from walrelay.parked_events order by commit_lsn, seq"
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def table_exists(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select to_regclass('walrelay.parked_events') is not null").fetchone()
        return bool(row and row[0])


def create_accounts(dsn: str) -> None:
    execute(dsn, "create table accounts (id int primary key, version int not null)")


async def test_one_failing_key_parks_while_a_thousand_others_flow(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_accounts(db)
    bad = 0
    async with Receiver(secret(monkeypatch)) as hook:
        hook.fail_when = lambda e: e["key"]["id"] == bad  # 503 for that key, for a while
        async with running_engine(config(db, hook.url)) as engine:
            start = time.monotonic()
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("insert into accounts values (%s, 0)", (bad,))
                for i in range(1, 1001):
                    conn.execute("insert into accounts values (%s, 0)", (i,))
                    if i % 100 == 0:  # the failing key keeps changing meanwhile
                        conn.execute(
                            "update accounts set version = version + 1 where id = %s", (bad,)
                        )
            after_writes = current_lsn(db)
            await wait_for(
                lambda: len(hook.received) >= 1000, within=30, what="the 1000 other keys"
            )
            others_took = time.monotonic() - start
            # The failing key's 11 events are parked, and the slot moved past them.
            await wait_for(
                lambda: table_exists(db) and len(parked_rows(db)) == 11,
                what="11 parked events",
            )
            await wait_for(
                lambda: slot_state(db, "walrelay")["confirmed"] >= after_writes,
                what="the slot to confirm past the parked events",
            )
            assert hook.versions(bad) == []
            # Only the first of them was ever sent: the others went straight behind it.
            rows = parked_rows(db)
            assert [r["event_id"] in hook.attempts for r in rows] == [True] + [False] * 10
            assert rows[0]["attempts"] >= 2 and all(r["attempts"] == 0 for r in rows[1:])
            assert hook.requests > 1000  # the failing key was retried meanwhile
            stats = engine.destinations["hook"].parking.stats()  # type: ignore[union-attr]
            assert stats["parked"] == 11 and stats["dead"] == 0
            assert stats["oldest_parked_age_seconds"] > 0
            hook.fail_when = None  # the receiver is back
            await wait_for(lambda: len(hook.received) == 1011, what="the failing key's events")
            await wait_for(lambda: parked_rows(db) == [], what="the table to drain")
    assert hook.versions(bad) == list(range(11))  # in order, after the others
    assert len(set(hook.ids)) == len(hook.ids) == 1011
    assert sorted({e["key"]["id"] for e in hook.received}) == list(range(1001))
    print(f"1000 other keys delivered in {others_took:.1f}s while one key failed")


async def test_sigkill_while_parked_then_restart_keeps_the_schedule_and_delivers_once(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_accounts(db)
    bad = 5
    async with Receiver(secret(monkeypatch)) as hook:
        hook.fail_when = lambda e: e["key"]["id"] == bad
        conf = config_dict(
            db, hook.url, backoff={"initial": 4, "multiplier": 1, "max": 4}, park_after=1
        )
        conf["log_level"] = "info"
        cfg = write_config_file(tmp_path / "walrelay.yaml", conf)
        with walrelay_process(cfg, tmp_path / "run1.log") as first:
            await wait_for(
                lambda: slot_state(db, "walrelay").get("active") is True,
                within=60,
                what="walrelay to stream",
            )
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("insert into accounts values (%s, 0)", (bad,))
                for v in range(1, 5):
                    conn.execute("update accounts set version = %s where id = %s", (v, bad))
                conn.execute("insert into accounts select g, 0 from generate_series(10, 29) g")
            after_writes = current_lsn(db)
            await wait_for(lambda: len(hook.received) == 20, what="the other keys")
            await wait_for(
                lambda: table_exists(db) and len(parked_rows(db)) == 5, what="5 parked events"
            )
            await wait_for(
                lambda: slot_state(db, "walrelay")["confirmed"] >= after_writes,
                what="the slot to confirm past them",
            )
            # Kill while the head's next attempt is well in the future.
            await wait_for(
                lambda: parked_rows(db)[0]["next_at"] > time.time() + 1.5,
                what="a next attempt more than 1.5s away",
            )
            head = parked_rows(db)[0]
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 30)
        hook.fail_when = None  # the receiver heals while walrelay is down
        tries_before = len(hook.attempts[head["event_id"]])
        assert tries_before >= 1 and head["attempts"] >= 1 and not head["dead"]
        with walrelay_process(cfg, tmp_path / "run2.log") as second:
            await wait_for(
                lambda: len(hook.received) == 25, what="the parked events after the restart"
            )
            await wait_for(lambda: parked_rows(db) == [], what="the table to drain")
            second.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(second.wait, 60)
            assert code == 0, (tmp_path / "run2.log").read_text()
    retried_at = hook.attempts[head["event_id"]][tries_before]
    # Not reset (it would be retried at once) and not skipped (it was retried).
    assert head["next_at"] - 0.05 <= retried_at <= head["next_at"] + 10, (retried_at, head)
    assert "5 parked and 0 dead event(s)" in (tmp_path / "run2.log").read_text()
    assert hook.versions(bad) == [0, 1, 2, 3, 4]
    assert len(hook.ids) == len(set(hook.ids)) == 25, "an event was delivered twice"


async def test_cap_pauses_replication_then_resumes_and_loses_nothing(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    create_accounts(db)
    async with Receiver(secret(monkeypatch)) as hook:
        hook.status = 503  # the destination is down
        raw = config_dict(db, hook.url, max_events=20, park_after=1)
        # Paused within this grace the reader keeps its connection (asserted below);
        # past it, it lets go of the server (test_backpressure.py).
        raw["source"]["disconnect_when_blocked_after"] = 60
        cfg = parse_config(raw, "(test)")
        async with running_engine(cfg) as engine:
            execute(db, "insert into accounts select g, 0 from generate_series(1, 30) g")
            await wait_for(lambda: engine.replication_paused, what="the cap to pause replication")
            assert any(
                r.levelno == logging.CRITICAL and r.getMessage().startswith(PAUSED_MESSAGE)
                for r in caplog.records
            )
            assert len(parked_rows(db)) <= 21
            before = current_lsn(db)
            execute(db, "insert into accounts select g, 0 from generate_series(31, 80) g")
            # The reader takes the second transaction's first event and stops there.
            await wait_for(lambda: engine.stats.events_in == 31, what="the reader to stop")
            feedback = engine.slot.feedback
            # What the engine had confirmed before the pause (earlier transactions,
            # the parked events) reaches the server at the next status update.
            await wait_for(
                lambda: (
                    max(engine.tracker.confirmed, feedback.slot_floor)
                    == feedback.last_sent
                    == slot_state(db, "walrelay")["confirmed"]
                ),
                what="the server to have every confirmation the engine made",
            )
            confirmed = slot_state(db, "walrelay")["confirmed"]
            for _ in range(5):  # several status intervals: nothing more is read
                await asyncio.sleep(0.3)
                assert engine.replication_paused
                assert engine.stats.events_in == 31
                assert slot_state(db, "walrelay")["confirmed"] == confirmed < before
            assert slot_state(db, "walrelay")["active"]  # paused, not disconnected
            hook.status = 200  # back: the backlog drains, replication resumes
            await wait_for(lambda: len(hook.received) == 80, within=60, what="all 80 events")
            await wait_for(lambda: not engine.replication_paused, what="resumed")
            await wait_for(lambda: parked_rows(db) == [], what="the table to drain")
    assert sorted(e["key"]["id"] for e in hook.received) == list(range(1, 81))
    assert len(set(hook.ids)) == 80


async def run_cli(*args: str, command: str = "parking") -> subprocess.CompletedProcess[str]:
    """``walrelay parking ...`` in a child process (in a thread: the engine keeps running)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "walrelay", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_permanent_rejection_is_dead_lettered_and_managed_with_the_cli(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_accounts(db)
    async with Receiver(secret(monkeypatch)) as hook:
        rejected = {13, 14}
        hook.status_for = lambda e: 422 if e["key"]["id"] in rejected else None
        conf = config_dict(db, hook.url, permanent_attempts=2, park_after=5)
        path = write_config_file(tmp_path / "walrelay.yaml", conf)
        async with running_engine(parse_config(conf, "(test)")):
            execute(db, "insert into accounts select g, 0 from generate_series(10, 20) g")
            await wait_for(lambda: len(hook.received) == 9, what="the accepted events")
            await wait_for(
                lambda: table_exists(db) and [r["dead"] for r in parked_rows(db)] == [True, True],
                what="two dead events",
            )
            assert all(len(hook.attempts[r["event_id"]]) == 2 for r in parked_rows(db))
            execute(db, "update accounts set version = 1 where id in (13, 14)")
            await wait_for(lambda: len(parked_rows(db)) == 4, what="later events parked behind")

            listed = await run_cli("list", "--config", str(path), "--json")
            assert listed.returncode == 0, listed.stderr
            data = orjson.loads(listed.stdout)
            assert data["destinations"] == [
                {
                    "destination": "hook",
                    "configured": True,
                    "parked": 2,
                    "dead": 2,
                    "skipped": 0,
                    "parked_bytes": data["destinations"][0]["parked_bytes"],
                    "oldest_parked_age_seconds": data["destinations"][0][
                        "oldest_parked_age_seconds"
                    ],
                }
            ]
            dead = [e for e in data["events"] if e["state"] == "dead"]
            assert [e["keys"] for e in dead] == [["public.accounts:13"], ["public.accounts:14"]]
            assert all(e["permanent"] and e["attempts"] == 2 for e in dead)
            assert all("422" in e["last_error"] for e in dead)
            shown = await run_cli("show", "--config", str(path), "--id", dead[0]["id"], "--json")
            assert orjson.loads(shown.stdout)["payload"]["record"] == {"id": 13, "version": 0}
            human = await run_cli("list", "--config", str(path), "--dead")
            assert "public.accounts:13" in human.stdout and "dead" in human.stdout

            # The receiver accepts 13 again: `retry` brings the dead event back,
            # and its key's later event follows it in order.
            rejected.discard(13)
            retried = await run_cli(
                "retry", "--config", str(path), "--key", "public.accounts:13", "--dead"
            )
            assert retried.returncode == 0 and "1 event(s) due now" in retried.stdout
            await wait_for(lambda: hook.versions(13) == [0, 1], what="13 delivered in order")
            # `discard` drops 14's dead event (logged), and the key moves on to its
            # next event (without the discard, the dead event would block it for ever).
            rejected.discard(14)
            discarded = await run_cli("discard", "--config", str(path), "--id", dead[1]["id"])
            assert discarded.returncode == 0 and "discarded 1 event(s)" in discarded.stdout
            assert dead[1]["id"] in discarded.stderr
            await wait_for(lambda: hook.versions(14) == [1], what="14's next event")
            await wait_for(lambda: parked_rows(db) == [], what="an empty table")
            refused = await run_cli("discard", "--config", str(path))
            assert refused.returncode == 2 and "--all" in refused.stderr


async def test_a_retry_asked_during_an_attempt_is_not_overwritten_by_it(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`walrelay parking retry` while the event's last attempt is in flight: that
    attempt fails and would make the event dead, but the operator's retry wins."""
    create_accounts(db)
    async with Receiver(secret(monkeypatch)) as hook:
        release = asyncio.Event()
        # Attempts 1 and 2 are rejected for good (2 = permanent_attempts: dead after
        # the second); attempt 2 is held until the CLI has run; a third is accepted.
        hook.status_for = lambda e: 422 if len(hook.attempts[e["id"]]) <= 2 else None
        hook.gate = lambda e: release if len(hook.attempts[e["id"]]) == 2 else None
        conf = config_dict(db, hook.url, permanent_attempts=2, park_after=5)
        path = write_config_file(tmp_path / "walrelay.yaml", conf)
        async with running_engine(parse_config(conf, "(test)")):
            execute(db, "insert into accounts values (13, 0)")
            await wait_for(hook.held.is_set, what="the last attempt in flight")
            retried = await run_cli("retry", "--config", str(path), "--key", "public.accounts:13")
            assert retried.returncode == 0 and "1 event(s) due now" in retried.stdout
            release.set()
            await wait_for(lambda: hook.versions(13) == [0], what="13 delivered after all")
            await wait_for(lambda: parked_rows(db) == [], what="an empty table")
    (attempts,) = hook.attempts.values()
    assert len(attempts) == 3


async def test_a_parked_routed_event_keeps_its_route_across_a_restart(db: str) -> None:
    """The parked-events table stores the route (migration 4): a routed outbox event
    parked before a restart is delivered after it to its routed topic, key and value."""
    from datetime import UTC, datetime

    from walrelay.config import ParkingConfig
    from walrelay.model import Event, Route
    from walrelay.pipeline.backoff import Backoff
    from walrelay.pipeline.parking import ParkingStore
    from walrelay.pipeline.scheduler import Destination
    from walrelay.sinks.memory import MemorySink

    def routed(seq: int, route: Route) -> Event:
        return Event(
            commit_lsn=0x1_0000_0100,
            seq=seq,
            op="insert",
            table="public.outbox",
            keys=(f"outbox\x1f{route.topic}\x1f{route.key}",),
            body=b'{"routed":"envelope"}',
            xid=7,
            committed_at=datetime(2024, 1, 1, tzinfo=UTC),
            route=route,
        )

    routes = [
        Route("order.events", "42", b'{"order":42}', (("event_type", "OrderCreated"),)),
        Route("order.events", "43", None, (("event_type", "OrderDeleted"),)),  # tombstone
        Route("odd.events", None, b"\xff\x00 not utf-8", (("a\\b", "c\x00d"),)),
    ]
    events = [routed(i, r) for i, r in enumerate(routes)]
    plain = Event(
        0x1_0000_0200, 0, "insert", "public.t", ("t\x1f1",), b"{}", 8, events[0].committed_at
    )
    fast = Backoff(initial=0.001, multiplier=2.0, maximum=0.005)

    # 1. Every delivery fails: the events are parked (routed or not).
    store = ParkingStore(db)
    await store.open()
    cfg = ParkingConfig.model_validate({"park_after": 1, "backoff": {"initial": 60}})
    sink = MemorySink(batch_size=1, fail_when=lambda e: True)
    dest = Destination(
        "d", sink, max_in_flight=4, backoff=fast, parking=store.parking_for("d", cfg)
    )
    parking = store.destinations["d"]
    store.start()
    dest.start()
    try:
        for e in [*events, plain]:
            await dest.put(e)
        await wait_for(lambda: parking.stats()["parked"] == 4, what="4 parked events")
    finally:
        await dest.stop()
        await store.close()
    with psycopg.connect(db, autocommit=True) as conn:
        stored = conn.execute(
            "select route from walrelay.parked_events order by commit_lsn, seq"
        ).fetchall()
        versions = [r[0] for r in conn.execute("select version from walrelay.schema_version")]
    assert 4 in versions
    assert stored[0][0] == {
        "topic": "order.events",
        "key": "42",
        "value": '{"order":42}',
        "headers": [["event_type", "OrderCreated"]],
    }
    assert stored[1][0]["value"] is None and stored[3][0] is None

    # 2. "Restart": a new store loads the rows; the healed sink gets them with their routes.
    store = ParkingStore(db)
    await store.open()
    cfg = ParkingConfig.model_validate({"backoff": {"initial": 0.01, "max": 0.02}})
    sink = MemorySink(batch_size=1)
    dest = Destination(
        "d", sink, max_in_flight=4, backoff=fast, parking=store.parking_for("d", cfg)
    )
    with psycopg.connect(db, autocommit=True) as conn:  # due now
        conn.execute("update walrelay.parked_events set next_attempt_at = now()")
    await store.load()
    store.start()
    dest.start()
    try:
        await wait_for(lambda: len(sink.delivered) == 4, what="the parked events delivered")
        await wait_for(lambda: parked_rows(db) == [], what="the table to drain")
    finally:
        await dest.stop()
        await store.close()
    by_id = {e.id: e for e in sink.delivered}
    for original in [*events, plain]:
        again = by_id[original.id]
        assert again.route == original.route
        assert again.body == original.body and again.keys == original.keys


async def test_an_old_failed_events_table_is_renamed_and_the_old_cli_name_still_works(
    db: str, tmp_path: Path
) -> None:
    """State migration 7 renames ``failed_events`` to ``parked_events``, rows and
    all; before it ran, the CLI says so in one line. ``walrelay failed list`` (the
    old name) still works, after one deprecation line on stderr."""
    from walrelay.state.migrations import MIGRATIONS, migrate

    conf = {
        "source": {"dsn": db, "tables": ["public.accounts"]},
        "destinations": [{"name": "hook", "sink": {"type": "stdout"}}],
    }
    path = write_config_file(tmp_path / "walrelay.yaml", conf)
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
        assert await migrate(aconn, "walrelay", [m for m in MIGRATIONS if m.version <= 6]) == 6
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "insert into walrelay.failed_events (destination, commit_lsn, seq, event_id, keys,"
            " op, table_name, xid, committed_at, payload, size)"
            " values ('hook', 16777216, 0, '0000000001000000/0', %s, 'insert',"
            " 'public.accounts', 5, now(), '{}'::bytea, 2)",
            (["public.accounts\x1f7"],),
        )

    before = await run_cli("list", "--config", str(path))
    assert before.returncode == 1 and len(before.stderr.splitlines()) == 1, before.stderr
    assert "walrelay.failed_events" in before.stderr and "`walrelay run`" in before.stderr

    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
        assert await migrate(aconn, "walrelay") == max(m.version for m in MIGRATIONS)
    with psycopg.connect(db, autocommit=True) as conn:
        names = conn.execute(
            "select to_regclass('walrelay.failed_events') is null,"
            " to_regclass('walrelay.parked_events_pkey') is not null"
        ).fetchone()
    assert names == (True, True)
    assert [r["event_id"] for r in parked_rows(db)] == ["0000000001000000/0"]

    listed = await run_cli("list", "--config", str(path), "--json")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    new = orjson.loads(listed.stdout)
    assert [(e["id"], e["keys"]) for e in new["events"]] == [
        ("0000000001000000/0", ["public.accounts:7"])
    ]
    old_name = await run_cli("list", "--config", str(path), "--json", command="failed")
    assert old_name.returncode == 0, old_name.stderr
    assert old_name.stderr.splitlines() == [
        "walrelay: `walrelay failed` is deprecated; use `walrelay parking` (same commands)"
    ]
    old = orjson.loads(old_name.stdout)
    assert old["events"] == new["events"]
    assert [(d["destination"], d["parked"]) for d in old["destinations"]] == [("hook", 1)]
