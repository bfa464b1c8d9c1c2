"""Initial snapshots: copy every existing row so that copy and stream meet exactly.

How copy and stream meet (no gap, no overlap)
---------------------------------------------
The slot is created over a replication connection with
``CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'export')``
(PostgreSQL docs, "Streaming Replication Protocol"). The server answers with
the slot's ``consistent_point`` and the name of a snapshot that sees exactly
the transactions committed before it: every transaction the slot will ever
stream commits at or after ``consistent_point``. Reader connections import
that snapshot (``SET TRANSACTION SNAPSHOT`` inside a REPEATABLE READ
transaction) and read the tables, in parallel ranges of the primary key for
large tables. The exporting connection stays open until every reader has
imported the snapshot and finished.

Ids and order
-------------
Every existing row becomes a ``read`` event with ``commit_lsn =
consistent_point - 1`` and ``seq`` = its ordinal in the snapshot (0, 1, ...).
Streamed changes have ``commit_lsn >= consistent_point``, so every snapshot
id sorts *before* every streamed id and never collides with one: the file
sink (which skips ids at or below its high-water mark) and the ledgers see
the snapshot as the oldest transaction. The snapshot events enter the
destinations' buffers before streaming starts, so for any key K the scheduler
delivers K's snapshot row before any change of K (per-key order).

For the LSN tracker the snapshot is one transaction ``consistent_point - 1``
that ends at ``consistent_point``: the slot is not confirmed past its
consistent point before every snapshot row is delivered (or parked). The
state database records a snapshot as ``running`` until then; when walrelay
restarts and finds a snapshot that did not finish, it drops the slot and
starts over with a new slot and a new snapshot (the rows already delivered
come again as ``read`` events with new ids: readers of ``read`` events must
treat them as upserts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.adapt import Loader

from walrelay.model import Begin, Change, Column, Event, Lsn, RawTuple, Relation, format_lsn
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.source.slot import TableInfo, split_table
from walrelay.source.types import TypeRegistry

if TYPE_CHECKING:
    from walrelay.engine import Engine
    from walrelay.pipeline.scheduler import Destination

log = logging.getLogger("walrelay.source.snapshot")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# The same session settings as the replication connection, so that the text
# values read here are byte for byte what pgoutput would have sent.
SESSION_OPTIONS = (
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c client_encoding=UTF8"
)
_INT_TYPES = {20: "int8", 21: "int2", 23: "int4"}
FETCH_ROWS = 2000


class _RawText(Loader):
    """Keep text values as the bytes PostgreSQL printed (what pgoutput sends)."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


async def connect_reader(dsn: str, *, autocommit: bool = False) -> Conn:
    conn = await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=autocommit,
        application_name="walrelay-snapshot",
        options=SESSION_OPTIONS,
    )
    conn.adapters.register_loader("text", _RawText)
    return conn


# -- progress -------------------------------------------------------------------


@dataclass
class Progress:
    """Rows done of estimated, for one table of a snapshot or one backfill."""

    kind: str  # "snapshot" | "backfill"
    table: str
    destinations: tuple[str, ...]
    rows_estimated: int = 0
    rows_done: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    backfill_id: int | None = None
    state: str = "running"

    @property
    def rate(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        elapsed = max(end - self.started_at, 1e-6)
        return self.rows_done / elapsed

    @property
    def eta_seconds(self) -> float | None:
        if self.finished_at is not None:
            return 0.0
        rate = self.rate
        if rate <= 0 or self.rows_estimated <= 0:
            return None
        return max(0.0, (self.rows_estimated - self.rows_done) / rate)

    def finish(self, state: str = "done") -> None:
        self.finished_at = time.time()
        self.state = state

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "table": self.table,
            "destinations": list(self.destinations),
            "backfill_id": self.backfill_id,
            "state": self.state,
            "rows_done": self.rows_done,
            "rows_estimated": self.rows_estimated,
            "rate": round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def format_progress(p: Progress) -> str:
    est = max(p.rows_estimated, p.rows_done)
    pct = f"{100.0 * p.rows_done / est:5.1f}%" if est else "  ?  "
    eta = p.eta_seconds
    eta_text = "?" if eta is None else f"{eta:.0f}s"
    return (
        f"{p.kind} {p.table}: {p.rows_done} of ~{est} rows ({pct}), "
        f"{p.rate:,.0f} rows/s, ETA {eta_text}"
    )


# -- the exported snapshot --------------------------------------------------------


@dataclass
class ExportedSlot:
    """A slot just created with an exported snapshot; close once the copy is read."""

    slot: str
    consistent_point: Lsn
    snapshot_name: str
    conn: psycopg.AsyncConnection[tuple[Any, ...]] | None

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


async def create_exported_slot(dsn: str, slot: str) -> ExportedSlot:
    """``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` (PostgreSQL 15 syntax).

    The returned connection must stay open while readers import the snapshot.
    """
    from walrelay.model import parse_lsn

    conn = await psycopg.AsyncConnection.connect(
        dsn, replication="database", autocommit=True, application_name="walrelay-snapshot"
    )
    try:
        cur = await conn.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                sql.Identifier(slot)
            )
        )
        row = await cur.fetchone()
    except BaseException:
        await conn.close()
        raise
    assert row is not None
    return ExportedSlot(slot, parse_lsn(str(row[1])), str(row[2]), conn)


# -- reading tables -----------------------------------------------------------------


_ATTRS = """
select attname, atttypid::int, atttypmod from pg_attribute
where attrelid = %s and attnum > 0 and not attisdropped and attgenerated = ''
order by attnum
"""


async def relation_for(conn: Conn, info: TableInfo) -> Relation:
    """A Relation like the one pgoutput sends for the table (column order, types)."""
    cur = await conn.execute(_ATTRS, (info.oid,))
    rows = await cur.fetchall()
    schema, name = split_table(info.name)
    gen = await conn.execute(
        "select attname::text from pg_attribute where attrelid = %s and attgenerated <> ''",
        (info.oid,),
    )
    generated = {bytes(r[0]).decode() for r in await gen.fetchall()}
    typmods = {(r[0].decode() if isinstance(r[0], bytes) else str(r[0])): int(r[2]) for r in rows}
    # The columns as the *current* catalog has them (a statement plans with the
    # latest catalog, while pg_attribute read in an old snapshot may list a
    # column dropped since): generated columns are left out, as pgoutput does.
    cur = await conn.execute(
        sql.SQL("select * from {} limit 0").format(sql.Identifier(schema, name))
    )
    cols = tuple(
        Column(d.name, int(d.type_code), typmods.get(d.name, -1), False)
        for d in cur.description or ()
        if d.name not in generated
    )
    keys = set(info.key_columns)
    cols = tuple(Column(c.name, c.type_oid, c.type_modifier, c.name in keys) for c in cols)
    return Relation(info.oid, schema, name, info.replica_identity, cols)


def select_list(rel: Relation) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in rel.columns
    )


def table_ident(rel: Relation) -> sql.Identifier:
    return sql.Identifier(rel.schema, rel.name)


async def estimate_rows(conn: Conn, oid: int) -> int:
    cur = await conn.execute("select reltuples::bigint from pg_class where oid = %s", (oid,))
    row = await cur.fetchone()
    return max(0, int(row[0])) if row and row[0] is not None else 0


@dataclass
class _Range:
    table: str
    lo: int | None = None  # inclusive
    hi: int | None = None  # exclusive


@dataclass
class _TablePlan:
    info: TableInfo
    rel: Relation
    progress: Progress
    ranges: list[_Range]


async def _import_snapshot(conn: Conn, snapshot_name: str) -> None:
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))


async def _plan_ranges(conn: Conn, plan: _TablePlan, parts: int) -> list[_Range]:
    """Split a large table with one integer key column into key ranges."""
    rel, info = plan.rel, plan.info
    name = info.name
    if parts <= 1 or len(info.key_columns) != 1 or plan.progress.rows_estimated < 100_000:
        return [_Range(name)]
    col = next(c for c in rel.columns if c.name == info.key_columns[0])
    if col.type_oid not in _INT_TYPES:
        return [_Range(name)]
    cur = await conn.execute(
        sql.SQL("select min({k})::text, max({k})::text from {t}").format(
            k=sql.Identifier(col.name), t=table_ident(rel)
        )
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return [_Range(name)]
    lo, hi = int(row[0]), int(row[1]) + 1
    step = max(1, -(-(hi - lo) // parts))
    return [_Range(name, a, min(a + step, hi)) for a in range(lo, hi, step)]


async def _read_range(
    conn: Conn, plan: _TablePlan, rng: _Range, out: asyncio.Queue[tuple[str, list[RawTuple]]]
) -> None:
    rel, info = plan.rel, plan.info
    query = sql.SQL("select {cols} from {t}").format(cols=select_list(rel), t=table_ident(rel))
    params: list[Any] = []
    if rng.lo is not None:
        k = sql.Identifier(info.key_columns[0])
        query = sql.SQL("{} where {k} >= %s and {k} < %s").format(query, k=k)
        params = [rng.lo, rng.hi]
    async with conn.cursor(name=f"walrelay_snap_{id(rng)}") as cur:
        cur.itersize = FETCH_ROWS
        await cur.execute(query, params)
        while True:
            rows = await cur.fetchmany(FETCH_ROWS)
            if not rows:
                break
            await out.put((rng.table, rows))


async def read_tables(
    dsn: str,
    snapshot_name: str,
    plans: Sequence[_TablePlan],
    out: asyncio.Queue[tuple[str, list[RawTuple]]],
    workers: int,
) -> None:
    """Read every range of every table with ``workers`` connections in the snapshot."""
    work: asyncio.Queue[tuple[_TablePlan, _Range]] = asyncio.Queue()
    for plan in plans:
        for rng in plan.ranges:
            work.put_nowait((plan, rng))

    async def worker() -> None:
        conn = await connect_reader(dsn)
        try:
            await _import_snapshot(conn, snapshot_name)
            while True:
                try:
                    plan, rng = work.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await _read_range(conn, plan, rng, out)
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    n = max(1, min(workers, work.qsize()))
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(worker())


# -- emitting into the engine --------------------------------------------------------


def snapshot_destinations(engine: Engine, table: str) -> list[Destination]:
    """Destinations that take an initial snapshot of ``table``."""
    out = []
    for dcfg in engine.config.destinations:
        if dcfg.snapshot != "initial":
            continue
        if dcfg.tables is not None and table not in dcfg.tables:
            continue
        if dcfg.ops is not None and "insert" not in dcfg.ops:
            continue  # a destination not taking inserts does not want rows either
        dest = engine.destinations.get(dcfg.name)
        if dest is not None:
            out.append(dest)
    return out


async def put_events(
    engine: Engine, commit_lsn: Lsn, dest: Destination, events: list[Event]
) -> None:
    """Count ``events`` in the tracker for ``dest``, then hand them over (in id order)."""
    router = engine._routers.get(dest.name)
    if router is not None:
        routed = [router.route(e) for e in events]
        events = [e for e in routed if e is not None]
    if not events:
        return
    engine.tracker.add(commit_lsn, len(events), destination=dest.name)
    for event in events:
        if not dest.try_put(event):
            await dest.put(event)


async def run_initial_snapshot(
    engine: Engine, exported: ExportedSlot, *, reset_tables: bool = False
) -> None:
    """Read every table in the exported snapshot and hand the rows to the destinations.

    ``reset_tables`` (re-snapshot after a lost slot): a ``truncate`` event of
    each table goes first, so that a destination drops rows deleted while no
    slot captured changes before the copy reloads the table.
    """
    info = engine.source_info
    assert info is not None
    commit_lsn = exported.consistent_point - 1
    begin = Begin(xid=0, commit_lsn=commit_lsn, committed_at=datetime.now(UTC))
    tracker = engine.tracker
    tracker.begin(commit_lsn)
    builder = EnvelopeBuilder(TypeRegistry(), key_columns=info.key_columns)
    src = engine.config.source
    plans: list[_TablePlan] = []
    dests_by_table: dict[str, list[Destination]] = {}
    # This transaction holds ACCESS SHARE locks on the tables until the copy is
    # read (as pg_dump does), so DDL waits instead of breaking the readers.
    conn = await connect_reader(src.dsn_value)
    try:
        await _import_snapshot(conn, exported.snapshot_name)
        for name, tinfo in info.tables.items():
            dests = snapshot_destinations(engine, name)
            if not dests:
                continue
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.Identifier(*split_table(name))
                )
            )
            rel = await relation_for(conn, tinfo)
            progress = Progress(
                "snapshot",
                name,
                tuple(d.name for d in dests),
                rows_estimated=await estimate_rows(conn, tinfo.oid),
            )
            plan = _TablePlan(tinfo, rel, progress, [])
            plan.ranges = await _plan_ranges(conn, plan, src.snapshot_workers * 4)
            plans.append(plan)
            dests_by_table[name] = dests
            engine.progress[f"snapshot:{name}"] = progress
    except BaseException:
        await conn.close()
        await exported.close()
        raise
    seq = 0
    if reset_tables:
        for plan in plans:
            ev = builder.build(begin, Change(op="truncate", relations=(plan.rel,)), seq)
            seq += 1
            for dest in dests_by_table[plan.info.name]:
                await put_events(engine, commit_lsn, dest, [ev])
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
        read_tables(src.dsn_value, exported.snapshot_name, plans, queue, src.snapshot_workers),
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
                    "stopping during the initial snapshot: it starts over (with a new slot) "
                    "next time"
                )
                return
            table, rows = get.result()
            plan = by_table[table]
            rel = plan.rel
            build = builder.build
            events = []
            for row in rows:
                events.append(build(begin, Change(op="read", relation=rel, new=row), seq))
                seq += 1
            for dest in dests_by_table[table]:
                await put_events(engine, commit_lsn, dest, events)
            plan.progress.rows_done += len(rows)
            engine.stats.events_in += len(rows)
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


# -- state: snapshots that did not finish -------------------------------------------------


async def ensure_state(conn: Conn, schema: str) -> None:
    from walrelay.state.migrations import migrate

    await migrate(conn, schema)


async def snapshot_status(conn: Conn, schema: str, slot: str) -> str | None:
    """The recorded status of the slot's initial snapshot (None: none recorded)."""
    cur = await conn.execute("select to_regclass(%s)", (f"{schema}.snapshots",))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    cur = await conn.execute(
        sql.SQL("select status from {}.snapshots where slot = %s").format(sql.Identifier(schema)),
        (slot,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    value = row[0]
    return value.decode() if isinstance(value, bytes) else str(value)


async def record_snapshot(dsn: str, schema: str, slot: str, point: Lsn, status: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await ensure_state(conn, schema)
        await conn.execute(
            sql.SQL(
                "insert into {}.snapshots (slot, consistent_point, status) values (%s, %s, %s) "
                "on conflict (slot) do update set consistent_point = excluded.consistent_point, "
                "status = excluded.status, started_at = case when excluded.status = 'running' "
                "then now() else {}.snapshots.started_at end, "
                "finished_at = case when excluded.status = 'done' then now() end"
            ).format(sql.Identifier(schema), sql.Identifier(schema)),
            (slot, format_lsn(point), status),
        )


async def drop_slot(conn: Conn, slot: str) -> bool:
    cur = await conn.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
        "where slot_name = %s and not active",
        (slot,),
    )
    return bool(await cur.fetchall())


async def mark_done_when_confirmed(engine: Engine, point: Lsn) -> None:
    """Record the snapshot as finished once the slot may be confirmed past it."""
    cfg = engine.config
    try:
        while engine.tracker.confirmed < point:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # polling the tracker
    except asyncio.CancelledError:
        # Stopping (after the drain): record it if the snapshot got delivered.
        if engine.tracker.confirmed >= point:
            await record_snapshot(cfg.state_dsn, cfg.state.schema, cfg.source.slot, point, "done")
        raise
    await record_snapshot(cfg.state_dsn, cfg.state.schema, cfg.source.slot, point, "done")
    log.info(
        "initial snapshot delivered: slot %s may now move past %s",
        cfg.source.slot,
        format_lsn(point),
    )
