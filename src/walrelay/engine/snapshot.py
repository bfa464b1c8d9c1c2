"""Initial snapshots, run by the engine: every existing row through the Router.

How copy and stream meet, and the ids the rows get, is told in
:mod:`walrelay.source.snapshot` (which reads the tables); this module hands
those rows to the engine's :class:`~walrelay.pipeline.router.Router` as one
transaction ``consistent_point - 1`` and records the snapshot as done once
the slot may move past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import psycopg
from psycopg import sql

from walrelay.model import Begin, Change, Lsn, RawTuple, format_lsn
from walrelay.source.slot import ExportedSlot, SourceInfo, split_table
from walrelay.source.snapshot import (
    Progress,
    TablePlan,
    connect_reader,
    estimate_rows,
    format_progress,
    import_snapshot,
    plan_ranges,
    read_tables,
    relation_for,
)
from walrelay.state.snapshots import record_snapshot

if TYPE_CHECKING:
    from walrelay.config import Config
    from walrelay.pipeline.lsn import LsnTracker
    from walrelay.pipeline.router import Router
    from walrelay.pipeline.scheduler import Destination

log = logging.getLogger("walrelay.engine.snapshot")


class Host(Protocol):
    """What snapshots and backfills use of the running engine: they hand rows
    to its router and never see the engine itself."""

    @property
    def config(self) -> Config: ...
    @property
    def source_info(self) -> SourceInfo | None: ...
    @property
    def router(self) -> Router | None: ...
    @property
    def tracker(self) -> LsnTracker: ...
    @property
    def destinations(self) -> dict[str, Destination]: ...
    @property
    def progress(self) -> dict[str, Progress]: ...
    @property
    def stopping(self) -> bool: ...


async def run_initial_snapshot(
    engine: Host, exported: ExportedSlot, *, reset_tables: bool = False
) -> None:
    """Read every table in the exported snapshot and hand the rows to the destinations.

    ``reset_tables`` (re-snapshot after a lost slot): a ``truncate`` event of
    each table goes first, so that a destination drops rows deleted while no
    slot captured changes before the copy reloads the table.
    """
    info = engine.source_info
    router = engine.router
    assert info is not None and router is not None
    commit_lsn = exported.consistent_point - 1
    begin = Begin(xid=0, commit_lsn=commit_lsn, committed_at=datetime.now(UTC))
    tracker = engine.tracker
    tracker.begin(commit_lsn)
    src = engine.config.source
    plans: list[TablePlan] = []
    dests_by_table: dict[str, list[Destination]] = {}
    # This transaction holds ACCESS SHARE locks on the tables until the copy is
    # read (as pg_dump does), so DDL waits instead of breaking the readers; it
    # reads too (see read_tables for why the other readers may step back).
    conn = await connect_reader(src.dsn_value)
    try:
        await import_snapshot(conn, exported.snapshot_name)
        for name, tinfo in info.tables.items():
            dests = router.snapshot_destinations(name)
            if not dests:
                continue
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.Identifier(*split_table(tinfo.name))
                )
            )
            rel = await relation_for(conn, tinfo)
            progress = Progress(
                "snapshot",
                name,
                tuple(d.name for d in dests),
                rows_estimated=await estimate_rows(conn, tinfo.oid),
            )
            plan = TablePlan(tinfo, rel, progress, [])
            plan.ranges = await plan_ranges(conn, plan, src.snapshot_workers * 4)
            plans.append(plan)
            dests_by_table[tinfo.name] = dests  # by its current name, as read
            engine.progress[f"snapshot:{name}"] = progress
    except BaseException:
        await conn.close()
        await exported.close()
        raise
    seq = 0
    if reset_tables:
        for plan in plans:
            ev = router.build(begin, Change(op="truncate", relations=(plan.rel,)), seq)
            seq += 1
            for dest in dests_by_table[plan.info.name]:
                await router.put_batch(commit_lsn, dest, [ev])
    log.info(
        "initial snapshot of %s at %s (slot %s)",
        ", ".join(p.info.name for p in plans) or "no table",
        format_lsn(exported.consistent_point),
        exported.slot,
    )
    by_table = {p.info.name: p for p in plans}
    queue: asyncio.Queue[tuple[str, list[RawTuple]]] = asyncio.Queue(
        maxsize=max(4, src.snapshot_workers * 4)
    )
    reader = asyncio.create_task(
        read_tables(
            src.dsn_value, exported.snapshot_name, plans, queue, src.snapshot_workers, conn
        ),
        name="walrelay-snapshot-read",
    )
    last_log = time.monotonic()
    try:
        while True:
            get = asyncio.create_task(queue.get())
            await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await get
                if queue.empty():
                    reader.result()  # raises if a reader failed
                    break
                continue
            if engine.stopping:
                log.warning(
                    "stopping during the initial snapshot: it resumes on the same slot next time"
                )
                return
            table, rows = get.result()
            plan = by_table[table]
            rel = plan.rel
            build = router.build
            events = []
            for row in rows:
                events.append(build(begin, Change(op="read", relation=rel, new=row), seq))
                seq += 1
            router.events_in += len(rows)
            for dest in dests_by_table[table]:
                await router.put_batch(commit_lsn, dest, events)
            plan.progress.rows_done += len(rows)
            now = time.monotonic()
            if now - last_log >= 5.0:
                last_log = now
                for p in plans:
                    if p.progress.rows_done:
                        log.info("%s", format_progress(p.progress))
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        await exported.close()
        with contextlib.suppress(psycopg.Error):
            await conn.close()
    tracker.seal(commit_lsn, exported.consistent_point)
    for p in plans:
        p.progress.finish()
        log.info("%s (read)", format_progress(p.progress))


async def mark_done_when_confirmed(engine: Host, point: Lsn) -> None:
    """Record the snapshot as finished once the slot may be confirmed past it."""
    cfg = engine.config
    record = functools.partial(
        record_snapshot, cfg.state_dsn, cfg.state.schema, cfg.source.slot, point, "done"
    )
    try:
        await engine.tracker.wait_confirmed(point)
    except asyncio.CancelledError:
        # Stopping (after the drain): record it if the snapshot got delivered.
        if engine.tracker.confirmed >= point:
            await record()
        raise
    await _not_cut_short(record())
    log.info(
        "initial snapshot delivered: slot %s may now move past %s",
        cfg.source.slot,
        format_lsn(point),
    )


async def _not_cut_short(write: Awaitable[None]) -> None:
    """Await ``write``; a stop that comes meanwhile waits for it to end, then
    goes on. A snapshot delivered but not recorded would be read again after
    a restart."""
    task = asyncio.ensure_future(write)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
