"""Backpressure never holds the primary: a sink blocked for good must not keep
the server from invalidating the slot, checkpointing or shutting down.

A walsender whose client stopped reading blocks writing to it; the server can
then neither terminate it (to invalidate the slot at max_slot_wal_keep_size)
nor finish a checkpoint or a fast shutdown. walrelay closes the replication
connection when delivery stays blocked (source.disconnect_when_blocked_after).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from tests.integration.support import execute, wait_for
from walrelay.config import Config, parse_config
from walrelay.engine import Engine
from walrelay.errors import SlotLost
from walrelay.model import Event
from walrelay.sinks.memory import MemorySink
from walrelay.testing.pgcluster import PgCluster, pg_bindir, start_cluster

# Enough change data (~48 MB of pgoutput) to fill every socket buffer between
# the walsender and us many times over, in transactions of ~3 MB.
_TRANSACTIONS = 15
_ROWS_PER_TRANSACTION = 1000


@pytest.fixture
def capped_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster(
        {"max_slot_wal_keep_size": "32MB", "wal_keep_size": "0", "max_wal_size": "64MB"}
    )
    try:
        yield cluster
    finally:
        cluster.stop()


class GatedSink(MemorySink):
    """A sink whose every delivery waits until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        super().__init__(batch_size=50, delay=self._wait_gate)

    async def _wait_gate(self, batch: Sequence[Event]) -> None:
        await self.gate.wait()


def _config(dsn: str) -> Config:
    return parse_config(
        {
            "source": {
                "dsn": dsn,
                "tables": ["public.big"],
                "status_interval": 1,
                "disconnect_when_blocked_after": 1,
            },
            "destinations": [
                {
                    "name": "stuck",
                    "sink": {"type": "file", "path": "/dev/null"},  # replaced by the GatedSink
                    "buffer_bytes": "1MB",
                    "snapshot": "never",
                }
            ],
            "ledger": {"type": "none"},
            "shutdown_timeout": 2,
            "http": {"enabled": False},
        },
        "(test)",
    )


def _fill(dsn: str) -> None:
    execute(
        dsn,
        *(
            f"insert into big (payload) select repeat(md5(i::text), 100) "
            f"from generate_series(1, {_ROWS_PER_TRANSACTION}) i"
            for _ in range(_TRANSACTIONS)
        ),
    )


def _slot_row(dsn: str) -> tuple[bool, str | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select active, wal_status from pg_replication_slots where slot_name = 'walrelay'"
        ).fetchone()
    assert row is not None, "slot walrelay is gone"
    return bool(row[0]), row[1]


async def _blocked_engine(dsn: str) -> tuple[Engine, GatedSink, asyncio.Task[None]]:
    execute(dsn, "create table big (id serial primary key, payload text)")
    sink = GatedSink()
    engine = Engine(_config(dsn), sink_factory=lambda d: sink)
    task = asyncio.create_task(engine.run())
    await wait_for(lambda: engine.started.is_set() or task.done(), what="engine start")
    if task.done():
        task.result()
    await asyncio.to_thread(_fill, dsn)
    dest = engine.destinations["stuck"]
    await wait_for(lambda: dest.blocked, within=30, what="delivery to block")
    return engine, sink, task


async def test_blocked_delivery_lets_the_server_invalidate_the_slot(
    capped_cluster: PgCluster,
) -> None:
    dsn = capped_cluster.dsn()
    engine, sink, task = await _blocked_engine(dsn)
    try:
        # walrelay lets go of the connection: the walsender is gone, the slot inactive.
        await wait_for(lambda: engine.backpressured, within=10, what="connection released")
        await wait_for(lambda: not _slot_row(dsn)[0], within=10, what="the slot to become inactive")
        assert engine.stats.backpressure_releases == 1

        # WAL past the cap, then a checkpoint: it finishes at once and invalidates.
        def past_cap_and_checkpoint() -> float:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("set statement_timeout = '30s'")
                conn.execute("create table filler (v int)")
                for i in range(4):
                    conn.execute("insert into filler values (%s)", (i,))
                    conn.execute("select pg_switch_wal()")
                began = time.monotonic()
                conn.execute("checkpoint")
                return time.monotonic() - began

        took = await asyncio.to_thread(past_cap_and_checkpoint)
        assert took < 5, f"CHECKPOINT took {took:.1f}s while walrelay was backpressured"
        assert _slot_row(dsn)[1] == "lost"

        # Delivery resumes: the reconnect finds the slot lost, pages and stops
        # (on_slot_lost: stop, the default).
        sink.gate.set()
        with pytest.raises(SlotLost, match="invalidated"):
            await asyncio.wait_for(task, timeout=30)
        lost = [c for c in engine.services.external_conditions.values() if c.rule == "slot_lost"]
        assert [c.severity.value for c in lost] == ["page"]
    finally:
        sink.gate.set()
        engine.request_stop()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_fast_shutdown_of_the_source_completes_while_backpressured(
    capped_cluster: PgCluster, tmp_path: Path
) -> None:
    dsn = capped_cluster.dsn()
    engine, sink, task = await _blocked_engine(dsn)
    try:
        # Blocked, and the replication connection released.
        await wait_for(lambda: engine.backpressured, within=10, what="connection released")
        began = time.monotonic()
        stopped = await asyncio.to_thread(
            subprocess.run,
            [
                str(pg_bindir() / "pg_ctl"),
                "stop",
                "-D",
                str(capped_cluster.datadir),
                "-m",
                "fast",
                "-t",
                "30",
                "-w",
            ],
            capture_output=True,
            user=_owner(capped_cluster),
        )
        took = time.monotonic() - began
        assert stopped.returncode == 0, stopped.stderr.decode(errors="replace")
        assert took < 10, f"pg_ctl stop -m fast took {took:.1f}s while walrelay was backpressured"
    finally:
        sink.gate.set()
        engine.request_stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=30)


def _owner(cluster: PgCluster) -> str | None:
    """pg_ctl refuses root: run it as the data directory's owner."""
    return pwd.getpwuid(os.stat(cluster.datadir).st_uid).pw_name if os.geteuid() == 0 else None
