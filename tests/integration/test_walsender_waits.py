"""Walsender wait events read from a real PostgreSQL: the estimate of a
remote walsender's CPU sees an idle walsender as waiting, not on CPU."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psycopg

from tests.integration.support import execute, running_engine, wait_for
from walrelay.config import parse_config
from walrelay.monitor.probe import Probe
from walrelay.monitor.walsender_waits import WalsenderWaits


async def test_an_idle_walsender_is_seen_waiting(db: str, tmp_path: Path) -> None:
    execute(db, "create table items (id int primary key)")
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "slot": "waits",
                "publication": "waits_pub",
                "tables": ["public.items"],
            },
            "destinations": [
                {"name": "file", "sink": {"type": "file", "path": str(tmp_path / "o.jsonl")}}
            ],
            "monitor": {"enabled": False},
            "http": {"enabled": False},
        }
    )
    async with running_engine(config):
        pids: list[int] = []

        def streaming() -> bool:
            with psycopg.connect(db, autocommit=True) as conn:
                row = conn.execute(
                    "select active_pid from pg_replication_slots where slot_name = 'waits'"
                ).fetchone()
            pids[:] = [int(row[0])] if row is not None and row[0] is not None else []
            return bool(pids)

        await wait_for(streaming, what="the walsender of slot waits")
        pid = pids[0]
        probe = Probe(db)
        waits = WalsenderWaits(probe.walsender_waits, window=2.0)
        task = asyncio.create_task(waits.run(period=0.05))
        try:
            await wait_for(lambda: waits.ratio(pid) is not None, what="2 s of wait samples")
            ratio = waits.ratio(pid)
            assert ratio is not None and ratio < 0.3, ratio
            assert waits.errors_total == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await probe.close()
