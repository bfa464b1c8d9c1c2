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
state database records a snapshot as ``running`` until then
(:mod:`walrelay.state.snapshots`); when walrelay
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
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Loader

from walrelay.model import Column, RawTuple, Relation
from walrelay.source.encoding import is_sql_ascii
from walrelay.source.slot import TableInfo, split_table
from walrelay.source.types import SESSION_OPTIONS  # values as pgoutput prints them
from walrelay.units import format_duration

log = logging.getLogger("walrelay.source.snapshot")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

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
    eta_text = format_duration(p.eta_seconds)
    return (
        f"{p.kind} {p.table}: {p.rows_done} of ~{est} rows ({pct}), "
        f"{p.rate:,.0f} rows/s, ETA {eta_text}"
    )


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
    # pgoutput sends atttypid (a domain's own OID); a row description has the
    # domain's base type, which would make a domain column look different here.
    typids = {(r[0].decode() if isinstance(r[0], bytes) else str(r[0])): int(r[1]) for r in rows}
    # The columns as the *current* catalog has them (a statement plans with the
    # latest catalog, while pg_attribute read in an old snapshot may list a
    # column dropped since): generated columns are left out, as pgoutput does.
    cur = await conn.execute(
        sql.SQL("select * from {} limit 0").format(sql.Identifier(schema, name))
    )
    cols = tuple(
        Column(d.name, typids.get(d.name, int(d.type_code)), typmods.get(d.name, -1), False)
        for d in cur.description or ()
        if d.name not in generated
    )
    keys = set(info.key_columns)
    cols = tuple(Column(c.name, c.type_oid, c.type_modifier, c.name in keys) for c in cols)
    return Relation(info.oid, schema, name, info.replica_identity, cols)


def select_list(rel: Relation, *, raw: bool = False) -> sql.Composable:
    """Every column as the text PostgreSQL prints; ``raw``: its bytes as
    stored, as bytea (a ``SQL_ASCII`` database: :mod:`walrelay.source.encoding`)."""
    form = "convert_to({}::text, 'SQL_ASCII')" if raw else "{}::text"
    return sql.SQL(", ").join(sql.SQL(form).format(sql.Identifier(c.name)) for c in rel.columns)


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
class TablePlan:
    info: TableInfo
    rel: Relation
    progress: Progress
    ranges: list[_Range]


async def import_snapshot(conn: Conn, snapshot_name: str) -> None:
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))


async def plan_ranges(conn: Conn, plan: TablePlan, parts: int) -> list[_Range]:
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
    conn: Conn, plan: TablePlan, rng: _Range, out: asyncio.Queue[tuple[str, list[RawTuple]]]
) -> None:
    rel, info = plan.rel, plan.info
    query = sql.SQL("select {cols} from {t}").format(
        cols=select_list(rel, raw=is_sql_ascii(conn)), t=table_ident(rel)
    )
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
    plans: Sequence[TablePlan],
    out: asyncio.Queue[tuple[str, list[RawTuple]]],
    workers: int,
    lead: Conn,
) -> None:
    """Read every range of every table in the snapshot, with ``workers`` connections.

    ``lead`` is the connection that imported the snapshot and holds ACCESS
    SHARE on every table; it reads too. A helper connection joins only if it
    gets the same locks at once: a DDL statement queued behind the lead's
    locks would otherwise queue each helper's first read behind itself, and
    the lead's transaction, which waits for the helpers, would never end — a
    deadlock PostgreSQL cannot see.
    """
    work: asyncio.Queue[tuple[TablePlan, _Range]] = asyncio.Queue()
    for plan in plans:
        for rng in plan.ranges:
            work.put_nowait((plan, rng))
    tables = sql.SQL(", ").join(table_ident(p.rel) for p in plans)

    async def drain(conn: Conn) -> None:
        while True:
            try:
                plan, rng = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _read_range(conn, plan, rng, out)

    async def helper() -> None:
        conn = await connect_reader(dsn)
        try:
            await import_snapshot(conn, snapshot_name)
            try:
                await conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT").format(tables)
                )
            except psycopg.errors.LockNotAvailable:
                log.info(
                    "a snapshot reader steps back: another session waits for a lock on "
                    "one of the tables (DDL?); the copy goes on with fewer connections"
                )
                return
            await drain(conn)
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    n = max(1, min(workers, work.qsize()))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(drain(lead))
        for _ in range(n - 1):
            tg.create_task(helper())


# -- the slot of a snapshot that did not finish ------------------------------------------


async def drop_slot(conn: Conn, slot: str) -> bool:
    cur = await conn.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
        "where slot_name = %s and not active",
        (slot,),
    )
    return bool(await cur.fetchall())
