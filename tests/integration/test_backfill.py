"""Backfills while streaming (issue 8): watermarks, resume from the cursor, progress."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from tests.integration.support import (
    execute,
    make_config,
    read_jsonl,
    running_engine,
    wait_for,
    write_config_file,
)
from walrelay.cli import main
from walrelay.engine import Engine
from walrelay.model import parse_event_id


def replay(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["op"] == "delete":
            state.pop(e["key"]["id"], None)
        elif e["op"] in ("read", "insert", "update"):
            state[e["key"]["id"]] = e["record"]
    return state


def source_rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select id, version, v from t").fetchall()
    return {r[0]: {"id": r[0], "version": r[1], "v": r[2]} for r in rows}


def backfill_row(dsn: str) -> tuple[str, int, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select status, rows_done, cursor from walrelay.backfills order by id desc limit 1"
        ).fetchone()
    return (row[0], row[1], row[2]) if row else ("none", 0, None)


class Writer(threading.Thread):
    def __init__(self, dsn: str, n: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.n = dsn, n
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(3)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    k = rng.randint(1, self.n)
                    if rng.random() < 0.9:
                        conn.execute(
                            "update t set version = version + 1, v = md5(random()::text) "
                            "where id = %s",
                            (k,),
                        )
                    else:
                        conn.execute("delete from t where id = %s", (k,))
                    self.stop.wait(0.001)  # a steady trickle of writes
        except BaseException as e:
            self.error = e


async def test_backfill_killed_half_way_resumes(db: str, tmp_path: Path) -> None:
    n = 20_000
    execute(
        db,
        "create table t (id bigint primary key, version int not null, v text)",
        f"insert into t select g, 1, 'x' || g from generate_series(1, {n}) g",
        "analyze t",
    )
    out = tmp_path / "events.jsonl"
    dest = {"name": "file", "sink": {"type": "file", "path": str(out)}, "snapshot": "never"}
    raw: dict[str, Any] = {
        "source": {"dsn": db, "tables": ["public.t"], "status_interval": 1},
        "destinations": [dest],
        "http": {"enabled": False},
    }
    config_path = write_config_file(tmp_path / "walrelay.yaml", raw)
    config = make_config(db, ["public.t"], [dest], backfill_poll_interval=0.1)
    writer = Writer(db, n)
    writer.start()
    try:
        engine = Engine(config)
        task = asyncio.create_task(engine.run())
        await wait_for(engine.started.is_set, what="engine start")
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            [
                "backfill",
                "--config",
                str(config_path),
                "--destination",
                "file",
                "--table",
                "t",
                "--rate",
                "8000",
                "--chunk-size",
                "1000",
                "--no-wait",
            ],
        )
        assert result.exit_code == 0, result.output
        await wait_for(lambda: backfill_row(db)[1] >= n // 3, within=30, what="a third done")
        progress = next(p for k, p in engine.progress.items() if k.startswith("backfill:"))
        assert progress.rows_estimated >= n * 0.9 and progress.rate > 0
        # Crash: cancel the engine in the middle of a chunk, no graceful stop.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        status, done_at_kill, cursor = backfill_row(db)
        assert status == "running" and 0 < done_at_kill < n and cursor
        async with running_engine(config) as engine2:
            await wait_for(lambda: backfill_row(db)[0] == "done", within=60, what="backfill done")
            writer.stop.set()
            await asyncio.to_thread(writer.join, 30)
            assert writer.error is None
            expected = source_rows(db)
            await wait_for(
                lambda: replay(read_jsonl(out)) == expected, within=30, what="equal to source"
            )
            assert engine2.progress
    finally:
        writer.stop.set()
    events = read_jsonl(out)
    assert not any(e["op"] == "message" for e in events)  # watermarks never delivered
    reads = [e for e in events if e["op"] == "read"]
    # Resumed from the cursor: at most the chunk in flight at the kill is read again.
    assert len(reads) <= n + 2 * 1000
    ids = [parse_event_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # A read never brings back an older version than one already delivered.
    last: dict[int, int] = {}
    for e in events:
        if e["op"] in ("read", "update", "insert"):
            k, v = e["key"]["id"], e["record"]["version"]
            if e["op"] == "read":
                assert v >= last.get(k, 0), f"stale read of {k}: {v} < {last[k]}"
            else:
                assert v > last.get(k, 0) or k not in last
            last[k] = v
        elif e["op"] == "delete":
            last.pop(e["key"]["id"], None)
    assert backfill_row(db)[1] >= n - 1000
