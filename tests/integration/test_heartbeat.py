"""Heartbeats and idle confirm keep a quiet slot from pinning WAL; heartbeats measure lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.support import execute, read_jsonl, running_engine, wait_for
from walrelay.config import Config, parse_config
from walrelay.model import parse_lsn

MiB = 1024 * 1024


def make(
    dsn: str,
    tables: list[str],
    destinations: list[dict[str, Any]],
    *,
    source: dict[str, Any] | None = None,
    heartbeat: dict[str, Any] | None = None,
) -> Config:
    src = {"dsn": dsn, "tables": tables, "status_interval": 1, **(source or {})}
    return parse_config(
        {
            "source": src,
            "destinations": destinations,
            "shutdown_timeout": 10,
            "http": {"enabled": False},
            "monitor": {"enabled": False},
            "heartbeat": heartbeat or {"enabled": False},
        },
        "(test)",
    )


async def slot_bytes(conn: psycopg.AsyncConnection[Any], slot: str) -> tuple[int, int, int]:
    """(current WAL LSN, retained bytes = current - restart_lsn, current - confirmed_flush)."""
    cur = await conn.execute(
        "select pg_current_wal_lsn()::text, restart_lsn::text, confirmed_flush_lsn::text "
        "from pg_replication_slots where slot_name = %s",
        (slot,),
    )
    row = await cur.fetchone()
    assert row is not None
    now, restart, confirmed = (parse_lsn(v) for v in row)
    return now, now - restart, now - confirmed


async def busy_while_quiet(dsn: str, slot: str, seconds: float) -> dict[str, Any]:
    """Write a table outside the publication continuously; sample the slot each second.

    A CHECKPOINT each second makes PostgreSQL log the running-transactions
    record that lets a slot's restart_lsn move (it does so on its own every
    15 s), so the test need not wait that long.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start, _, _ = await slot_bytes(conn, slot)
        samples: list[tuple[int, int, int]] = []  # (written, retained, unconfirmed)
        deadline = time.monotonic() + seconds
        next_sample = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for _ in range(8):
                # Small transactions (~30 kB, below the suite's 64 kB
                # logical_decoding_work_mem): larger ones would be *streamed*,
                # and pgoutput sends even an empty streamed transaction, whose
                # commit the engine would confirm -- hiding the problem shown here.
                await conn.execute(
                    "insert into busy (pad) select repeat('x', 1000) from generate_series(1, 30)"
                )
            if time.monotonic() >= next_sample:
                next_sample += 1.0
                await conn.execute("checkpoint")
                await asyncio.sleep(0.2)  # let the walsender decode the checkpoint's records
                now, retained, unconfirmed = await slot_bytes(conn, slot)
                samples.append((now - start, retained, unconfirmed))
            await asyncio.sleep(0.02)  # a steady write rate, not a tight loop
        end, retained, unconfirmed = await slot_bytes(conn, slot)
    return {
        "written": end - start,
        "samples": samples,
        "retained": retained,
        "unconfirmed": unconfirmed,
        "max_retained": max(r for _, r, _ in samples),
    }


async def test_retained_wal_is_bounded_only_with_idle_confirm_or_heartbeats(
    db: str, tmp_path: Path
) -> None:
    execute(
        db,
        "create table quiet (id int primary key)",
        "create table busy (id bigserial primary key, pad text)",
    )
    phases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("defaults", {}, {"interval": 1}),
        ("heartbeats only", {"confirm_idle": False}, {"interval": 0.5}),
        ("neither", {"confirm_idle": False}, {"enabled": False}),
    ]
    results: dict[str, dict[str, Any]] = {}
    for i, (name, source, heartbeat) in enumerate(phases):
        slot = f"hb_{i}"
        config = make(
            db,
            ["public.quiet"],
            [{"name": "file", "sink": {"type": "file", "path": str(tmp_path / f"{i}.jsonl")}}],
            source={"slot": slot, "publication": f"hb_pub_{i}", **source},
            heartbeat=heartbeat,
        )
        async with running_engine(config):
            results[name] = await busy_while_quiet(db, slot, seconds=7)
        execute(db, f"select pg_drop_replication_slot('{slot}')")
    for name, r in results.items():
        print(
            f"{name:16s}: wrote {r['written'] / MiB:6.1f} MiB; slot retains "
            f"{r['retained'] / MiB:6.1f} MiB at the end (max after a checkpoint "
            f"{r['max_retained'] / MiB:.1f}), unconfirmed {r['unconfirmed'] / MiB:.1f} MiB; "
            f"(written, retained) after each checkpoint (MiB): "
            f"{[(round(w / MiB, 1), round(s / MiB, 1)) for w, s, _ in r['samples']]}"
        )
    for name in ("defaults", "heartbeats only"):
        r = results[name]
        assert r["written"] > 10 * MiB
        # Bounded: what the last second or two wrote (restart_lsn moves at
        # running-xacts records, i.e. each CHECKPOINT here), not everything.
        assert r["max_retained"] < 0.35 * r["written"], (name, r)
        written, retained, _ = r["samples"][-1]
        assert retained < 0.4 * written, (name, r)
    r = results["neither"]
    assert r["written"] > 10 * MiB
    # Without either, the slot pins everything written since it was created.
    for written, retained, _ in r["samples"]:
        assert retained >= 0.95 * written, r
    retained_series = [s for _, s, _ in r["samples"]]
    assert retained_series == sorted(retained_series)  # and it only grows


@pytest.mark.parametrize("mode", ["message", "table"])
async def test_heartbeats_measure_lag_and_are_never_delivered(
    db: str, tmp_path: Path, mode: str
) -> None:
    execute(db, "create table items (id int primary key)")
    out = tmp_path / "events.jsonl"
    heartbeat: dict[str, Any] = {"interval": 0.2}
    if mode == "table":
        heartbeat["table"] = "public.walrelay_heartbeat"
    config = make(
        db,
        ["public.items"],
        [{"name": "file", "sink": {"type": "file", "path": str(out)}}],
        heartbeat=heartbeat,
    )
    async with running_engine(config) as engine:
        assert engine.heartbeat is not None
        hb = engine.heartbeat
        await wait_for(lambda: hb.received >= 5, within=20, what="5 heartbeats")
        execute(
            db,
            "insert into items values (1)",
            "select pg_logical_emit_message(true, 'audit', 'kept')",
        )
        await wait_for(lambda: len(read_jsonl(out)) >= 2, what="the two real events")
        lag = engine.stats.heartbeat_lag
    assert lag is not None and 0 <= lag < 5
    events = read_jsonl(out)
    assert [(e["op"], e["table"], e.get("prefix")) for e in events] == [
        ("insert", "public.items", None),
        ("message", None, "audit"),
    ]
    if mode == "table":
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(
                "select seq from walrelay_heartbeat where slot = 'walrelay'"
            ).fetchone()
            assert row is not None and row[0] >= 5
            published = conn.execute(
                "select tablename from pg_publication_tables where pubname = 'walrelay_pub'"
            ).fetchall()
        assert ("walrelay_heartbeat",) in published
