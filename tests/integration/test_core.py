"""Issue 2 end to end, against a real PostgreSQL cluster started by the suite."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.integration.support import (
    WebhookReceiver,
    current_lsn,
    execute,
    make_config,
    read_jsonl,
    running_engine,
    slot_state,
    wait_for,
)
from walrelay.model import parse_event_id, parse_lsn


def file_dest(path: Path, **extra: object) -> dict[str, object]:
    return {"name": "file", "sink": {"type": "file", "path": str(path)}, **extra}


async def test_every_op_type(db: str, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    execute(
        db,
        "create table items (id int primary key, name text, big text)",
        "create table full_ident (id int primary key, v text)",
        "alter table full_ident replica identity full",
    )
    config = make_config(db, ["public.items", "public.full_ident"], [file_dest(out)])
    big = "x" * 300_000  # stored out of line (TOAST)
    async with running_engine(config):
        execute(db, "insert into items values (1, 'one', %s)", params=(big,))
        execute(db, "update items set name = 'uno' where id = 1")  # big unchanged: TOAST
        execute(db, "update items set id = 2 where id = 1")  # key change
        execute(db, "insert into full_ident values (7, 'a')")
        execute(db, "update full_ident set v = 'b' where id = 7")
        execute(db, "delete from full_ident where id = 7")
        execute(db, "select pg_logical_emit_message(true, 'audit', 'in a transaction')")
        execute(db, "select pg_logical_emit_message(false, 'ping', 'not transactional')")
        execute(db, "delete from items where id = 2")
        execute(db, "insert into items values (3, 'three', null)")
        execute(db, "truncate items, full_ident")
        await wait_for(lambda: len(read_jsonl(out)) >= 11, what="11 events")
    events = read_jsonl(out)
    assert [(e["op"], e["table"]) for e in events] == [
        ("insert", "public.items"),
        ("update", "public.items"),
        ("update", "public.items"),
        ("insert", "public.full_ident"),
        ("update", "public.full_ident"),
        ("delete", "public.full_ident"),
        ("message", None),
        ("message", None),
        ("delete", "public.items"),
        ("insert", "public.items"),
        ("truncate", None),
    ]
    ins, toast_upd, key_upd, fi_ins, fi_upd, fi_del, msg_tx, msg_ntx, dele, ins3, trunc = events
    assert ins["record"] == {"id": 1, "name": "one", "big": big}
    assert ins["key"] == {"id": 1} and ins["old"] is None
    # TOAST: the unchanged column is marked, never emitted as null.
    assert toast_upd["record"] == {"id": 1, "name": "uno"}
    assert toast_upd["unchanged"] == ["big"]
    # Key change: new key in key/record, old key in old.
    assert key_upd["key"] == {"id": 2} and key_upd["old"] == {"id": 1}
    # REPLICA IDENTITY FULL: the whole old row; key from the primary key.
    assert fi_upd["old"] == {"id": 7, "v": "a"} and fi_upd["key"] == {"id": 7}
    assert fi_del["old"] == {"id": 7, "v": "b"} and fi_del["record"] is None
    assert fi_ins["record"] == {"id": 7, "v": "a"}
    assert msg_tx["prefix"] == "audit" and msg_tx["content"] == "in a transaction"
    assert msg_ntx["prefix"] == "ping" and msg_ntx["content"] == "not transactional"
    assert dele["key"] == {"id": 2} and dele["old"] == {"id": 2} and dele["record"] is None
    assert ins3["record"] == {"id": 3, "name": "three", "big": None}
    assert sorted(trunc["tables"]) == ["public.full_ident", "public.items"]
    for e in events:
        lsn, seq = parse_event_id(e["id"])
        assert lsn == parse_lsn(e["commit_lsn"]) and seq >= 0
        assert isinstance(e["xid"], int)
        assert datetime.fromisoformat(e["committed_at"]).tzinfo is not None
    ids = [parse_event_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_type_matrix(db: str, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    execute(
        db,
        "create type mood as enum ('sad', 'happy')",
        """create table typed (
            id bigint primary key, i2 smallint, i4 int, n numeric, n_big numeric(40, 20),
            f8 float8, b bool, t text, vc varchar(10), j json, jb jsonb,
            ts timestamp, tstz timestamptz, d date, tm time, u uuid, by bytea,
            arr int[], tarr text[], m mood, ip inet, iv interval, ts_inf timestamptz
        )""",
    )
    config = make_config(db, ["public.typed"], [file_dest(out)])
    async with running_engine(config):
        execute(
            db,
            """insert into typed values (
                9007199254740993, -32768, 2147483647, 0.1,
                12345678901234567890.12345678901234567890,
                1.5, true, 'héllo', 'short', '{"a": [1, 2]}', '{"b": {"c": null}}',
                '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5+02', '2024-02-29',
                '23:59:59.999999', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10',
                '{1,NULL,3}', '{"a b","c"}', 'happy', '10.0.0.1/32', '1 day 02:03:04',
                'infinity'
            )""",
        )
        await wait_for(lambda: len(read_jsonl(out)) >= 1, what="the event")
    rec = read_jsonl(out)[0]["record"]
    assert rec["id"] == 9007199254740993  # beyond float precision, kept exact
    assert rec["i2"] == -32768 and rec["i4"] == 2147483647
    assert Decimal(rec["n"]) == Decimal("0.1")
    assert Decimal(rec["n_big"]) == Decimal("12345678901234567890.12345678901234567890")
    assert rec["f8"] == 1.5 and rec["b"] is True
    assert rec["t"] == "héllo" and rec["vc"] == "short"
    assert rec["j"] == {"a": [1, 2]} and rec["jb"] == {"b": {"c": None}}
    assert datetime.fromisoformat(rec["ts"]) == datetime(2024, 2, 29, 13, 14, 15, 123456)
    assert datetime.fromisoformat(rec["tstz"]) == datetime(2024, 2, 29, 11, 14, 15, 500000, UTC)
    assert date.fromisoformat(rec["d"]) == date(2024, 2, 29)
    assert rec["tm"] == "23:59:59.999999"
    assert rec["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert rec["by"] == "\\x00ff10"
    assert rec["arr"] == [1, None, 3] and rec["tarr"] == ["a b", "c"]
    assert rec["m"] == "happy" and rec["ip"] == "10.0.0.1"
    assert rec["iv"] == "P1DT2H3M4S"
    assert rec["ts_inf"] == "infinity"


def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    return secret


async def test_per_key_order_with_parallel_webhook(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(db, "create table counters (id int primary key, version int not null)")
    secret = webhook_secret(monkeypatch)
    async with WebhookReceiver(secret, delay=(0.0, 0.02)) as hook:
        config = make_config(
            db,
            ["public.counters"],
            [
                {
                    "name": "hook",
                    "max_in_flight": 32,
                    "sink": {
                        "type": "webhook",
                        "url": hook.url,
                        "secret_env": "WALRELAY_TEST_SECRET",
                    },
                }
            ],
        )
        keys, versions = 40, 15
        rng = random.Random(3)
        async with running_engine(config) as engine:
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(
                    "insert into counters select g, 0 from generate_series(1, %s) g", (keys,)
                )
                plan = [k for k in range(1, keys + 1) for _ in range(versions)]
                rng.shuffle(plan)
                for k in plan:
                    conn.execute("update counters set version = version + 1 where id = %s", (k,))
            total = keys + keys * versions
            await wait_for(lambda: len(hook.received) >= total, within=120, what="all events")
            assert engine.destinations["hook"].max_in_flight == 32
    seen: dict[int, list[int]] = defaultdict(list)
    for e in hook.received:
        seen[e["key"]["id"]].append(e["record"]["version"])
    assert len(hook.received) == total
    for k in range(1, keys + 1):
        assert seen[k] == list(range(versions + 1)), f"key {k} out of order: {seen[k]}"
    # Delivery order across keys differs from commit order: deliveries overlapped.
    ids = [parse_event_id(i) for i in hook.ids]
    assert ids != sorted(ids)


async def test_confirmed_lsn_waits_for_delivery(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    execute(db, "create table orders (id int primary key, amount int)")
    secret = webhook_secret(monkeypatch)
    async with WebhookReceiver(secret) as hook:
        hook.status = 503  # receiver down
        config = make_config(
            db,
            ["public.orders"],
            [
                {
                    "name": "hook",
                    "retry": {"initial": 0.05, "max": 0.2},
                    "parking": {"enabled": False},  # retried in memory, never parked
                    "sink": {
                        "type": "webhook",
                        "url": hook.url,
                        "secret_env": "WALRELAY_TEST_SECRET",
                    },
                }
            ],
            status_interval=0.2,
        )
        async with running_engine(config) as engine:
            before = current_lsn(db)
            execute(db, "insert into orders values (1, 100)")
            await wait_for(lambda: hook.requests >= 5, what="several failed attempts")
            # Writes elsewhere keep WAL moving; the slot must still not pass the event.
            execute(db, "create table other (x int)", "insert into other select 1")
            await wait_for(
                lambda: engine.tracker.pending_events() == 1, what="the event to be pending"
            )
            for _ in range(3):
                state = slot_state(db, "walrelay")
                assert state["confirmed"] <= current_lsn(db)
                assert state["confirmed"] < before + 10_000
                event_lsn = engine.tracker.oldest_pending_commit_lsn()
                assert event_lsn is not None and state["confirmed"] <= event_lsn
                # Deliberate: let status updates go out to prove the slot does not advance.
                await asyncio.sleep(0.3)
            hook.status = 200  # receiver back
            await wait_for(lambda: len(hook.received) == 1, what="delivery after recovery")
            await wait_for(
                lambda: slot_state(db, "walrelay")["confirmed"] > event_lsn,
                what="the slot to advance past the delivered event",
            )
    assert hook.received[0]["record"] == {"id": 1, "amount": 100}


async def test_slot_advances_through_unpublished_writes(db: str, tmp_path: Path) -> None:
    execute(
        db,
        "create table published (id int primary key)",
        "create table busy (id serial primary key, payload text)",
    )
    config = make_config(db, ["public.published"], [file_dest(tmp_path / "e.jsonl")])
    async with running_engine(config):
        start = slot_state(db, "walrelay")["confirmed"]
        for _ in range(20):
            execute(
                db,
                "insert into busy (payload) select repeat('x', 500) from generate_series(1, 500)",
            )
        target = current_lsn(db)
        assert target - start > 1_000_000
        await wait_for(
            lambda: slot_state(db, "walrelay")["confirmed"] >= target,
            within=30,
            what="the idle slot to confirm past the unpublished writes",
        )
    assert read_jsonl(tmp_path / "e.jsonl") == []


async def test_status_updates_continue_while_backpressured(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused reader still answers the server: wal_sender_timeout never fires."""
    execute(db, "create table t (id int primary key, pad text)")
    execute(db, "alter system set wal_sender_timeout = '2s'", "select pg_reload_conf()")
    secret = webhook_secret(monkeypatch)
    try:
        async with WebhookReceiver(secret) as hook:
            hook.status = 503  # nothing gets delivered: the buffer fills and stays full
            config = make_config(
                db,
                ["public.t"],
                [
                    {
                        "name": "hook",
                        "buffer_bytes": 4096,
                        "retry": {"initial": 0.5, "max": 1},
                        "parking": {"enabled": False},  # the buffer must fill, not park
                        "sink": {
                            "type": "webhook",
                            "url": hook.url,
                            "secret_env": "WALRELAY_TEST_SECRET",
                        },
                    }
                ],
                status_interval=0.5,
                # Within this grace the blocked reader keeps its connection (what
                # this test is about); past it, it lets go (test_backpressure.py).
                disconnect_when_blocked_after=60,
            )
            async with running_engine(config) as engine:
                await wait_for(
                    lambda: slot_state(db, "walrelay").get("active") is True, what="streaming"
                )
                pid = slot_state(db, "walrelay")["active_pid"]
                execute(
                    db, "insert into t select g, repeat('x', 200) from generate_series(1, 500) g"
                )
                dest = engine.destinations["hook"]
                await wait_for(lambda: dest.blocked, what="the reader to block on a full buffer")
                # Deliberate: three wal_sender_timeouts pass with the reader blocked,
                # to prove the connection is not dropped.
                await asyncio.sleep(6)
                assert dest.blocked
                assert engine.stats.reconnects == 0
                assert slot_state(db, "walrelay")["active_pid"] == pid
                hook.status = 200
                await wait_for(lambda: len(hook.received) == 500, what="every event")
    finally:
        execute(db, "alter system reset wal_sender_timeout", "select pg_reload_conf()")
