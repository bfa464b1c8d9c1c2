"""The outbox table: its DDL (``walrelay outbox init``) and the upkeep of its
daily partitions (``walrelay outbox maintain``, and the engine on a schedule
when ``outbox:`` is configured).

The table (names from config always go through ``sql.Identifier``)::

    CREATE TABLE outbox (
        id bigserial, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
        event_type text NOT NULL, payload jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (id, created_at)          -- must include the partition key
    ) PARTITION BY RANGE (created_at);       -- one partition per UTC day

with REPLICA IDENTITY DEFAULT and a publication ``FOR TABLE`` that table only,
``publish_via_partition_root = true`` (changes are published as the root table,
whichever day's partition holds the row). There is no DEFAULT partition: a row
outside the prepared days fails loudly instead of landing in a partition that
could never be dropped cheaply -- keep ``days_ahead`` comfortably above how
long upkeep could be down.

Retention never DELETEs a row (a DELETE per row would go through the WAL and
the slot); it drops whole partitions, and only provably delivered ones:

1. **Detach.** In one transaction: ``ALTER TABLE outbox DETACH PARTITION p``
   (waits for every transaction that inserted into ``p`` to end -- their
   commit records are in the WAL by then -- with a short ``lock_timeout`` so
   the application's inserts are not held up behind a queue), then read
   ``L = pg_current_wal_insert_lsn()``, then record L in the detached table's
   comment. Every event the partition ever held was committed before L. From
   then on nothing can add an event to it: the outbox no longer routes rows
   there, and the publication no longer covers it (rows written to the
   detached table by name are not outbox events).
2. **Drop** the detached table once the slot's ``confirmed_flush_lsn`` is at
   or past L -- walrelay confirms only what every destination has delivered
   (or durably parked), so every event of the partition has been delivered.
   Until then the table stays, with its rows (nothing is lost if the slot
   has to be rebuilt and the outbox backfilled), and each run checks again.

Detaching is safe for the stream itself: logical decoding reads the rows from
the WAL with the catalog as it was when they were written, so events not yet
streamed are still published as the root table's. Detach and drop are DDL:
no DELETE reaches the WAL stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from walrelay import failpoints, sqltext
from walrelay.errors import ConfigError
from walrelay.model import Lsn, format_lsn, parse_lsn

__all__ = [
    "MaintainReport",
    "OutboxTable",
    "init_outbox",
    "init_statements",
    "maintain",
    "upkeep_loop",
]

log = logging.getLogger("walrelay.outbox")

AConn = psycopg.AsyncConnection[Any]

_BOUND: Final = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")
_SUFFIX_LEN: Final = len("_p20260101")
_COMMENT: Final = "walrelay outbox partition detached from {} at LSN {}"
_COMMENT_LSN: Final = re.compile(r" at LSN ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def utc_today() -> date:
    return datetime.now(UTC).date()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class OutboxTable:
    """Where the outbox lives: ``schema.name``; partitions are ``<name>_pYYYYMMDD``."""

    schema: str = "public"
    name: str = "outbox"

    def __post_init__(self) -> None:
        if not self.schema or not self.name:
            raise ConfigError("outbox table: schema and table names must not be empty")
        if len(self.name.encode()) > 63 - _SUFFIX_LEN:
            raise ConfigError(
                f"outbox table name {self.name!r} is too long for partition names "
                f"({self.name}_pYYYYMMDD must fit PostgreSQL's 63 bytes)",
                fix=f"use a table name of at most {63 - _SUFFIX_LEN} bytes",
            )

    @classmethod
    def parse(cls, qualified: str) -> OutboxTable:
        schema, _, name = qualified.strip().partition(".")
        return cls(schema, name) if name else cls("public", schema)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def partition_name(self, day: date) -> str:
        return f"{self.name}_p{day:%Y%m%d}"

    def partition_ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)


def _text(stmt: sql.Composed) -> str:
    return stmt.as_string(None)


# -- DDL ------------------------------------------------------------------------


def table_statements(t: OutboxTable) -> list[sql.Composed]:
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(t.schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    id bigserial NOT NULL,\n"
            "    aggregate_type text NOT NULL,\n"
            "    aggregate_id text NOT NULL,\n"
            "    event_type text NOT NULL,\n"
            "    payload jsonb,\n"
            "    created_at timestamptz NOT NULL DEFAULT now(),\n"
            "    PRIMARY KEY (id, created_at)\n"
            ") PARTITION BY RANGE (created_at)"
        ).format(t.ident),
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(t.ident),
    ]


def partition_statement(t: OutboxTable, day: date) -> sql.Composed:
    lo = _midnight(day)
    hi = lo + timedelta(days=1)
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
    ).format(
        t.partition_ident(t.partition_name(day)),
        t.ident,
        sql.Literal(lo.strftime("%Y-%m-%d %H:%M:%S+00")),
        sql.Literal(hi.strftime("%Y-%m-%d %H:%M:%S+00")),
    )


def publication_statement(t: OutboxTable, publication: str) -> sql.Composed:
    return sql.SQL(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
    ).format(sql.Identifier(publication), t.ident)


def init_statements(
    t: OutboxTable, publication: str, *, days_ahead: int = 7, today: date | None = None
) -> list[sql.Composed]:
    """Everything ``outbox init`` runs on an empty database."""
    today = today or utc_today()
    out = table_statements(t)
    out += [partition_statement(t, today + timedelta(days=i)) for i in range(days_ahead + 1)]
    out.append(publication_statement(t, publication))
    return out


# -- catalog reads -------------------------------------------------------------------


@dataclass(frozen=True)
class _Partition:
    name: str
    lower: datetime
    upper: datetime


async def _relkind(conn: AConn, t: OutboxTable) -> str | None:
    cur = await conn.execute(
        "select c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s",
        (t.schema, t.name),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def _partitions(conn: AConn, t: OutboxTable) -> list[_Partition]:
    """The attached range partitions with their bounds (in UTC)."""
    out: list[_Partition] = []
    async with conn.transaction():
        await conn.execute("set local timezone to 'UTC'")
        cur = await conn.execute(
            "select c.relname, pg_get_expr(c.relpartbound, c.oid) "
            "from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "join pg_class p on p.oid = i.inhparent "
            "join pg_namespace n on n.oid = p.relnamespace "
            "where n.nspname = %s and p.relname = %s",
            (t.schema, t.name),
        )
        for name, bound in await cur.fetchall():
            m = _BOUND.search(str(bound or ""))
            if m is None:
                continue  # DEFAULT or MINVALUE/MAXVALUE: not ours, never dropped
            try:
                lo = datetime.fromisoformat(m.group(1))
                hi = datetime.fromisoformat(m.group(2))
            except ValueError:
                continue
            out.append(_Partition(str(name), lo, hi))
    return sorted(out, key=lambda p: p.lower)


async def _detached(conn: AConn, t: OutboxTable) -> list[tuple[str, Lsn]]:
    """Tables detached by upkeep and not yet dropped: (name, LSN recorded at detach)."""
    prefix = _COMMENT.format(t.qualified, "")
    cur = await conn.execute(
        "select c.relname, obj_description(c.oid, 'pg_class') "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relkind = 'r' "
        "and left(obj_description(c.oid, 'pg_class'), %s) = %s",
        (t.schema, len(prefix), prefix),
    )
    out: list[tuple[str, Lsn]] = []
    for name, comment in await cur.fetchall():
        m = _COMMENT_LSN.search(str(comment))
        if m is not None:
            out.append((str(name), parse_lsn(m.group(1))))
    return sorted(out)


async def _slot_positions(conn: AConn, slots: Sequence[str] | None) -> dict[str, Lsn | None]:
    """confirmed_flush_lsn of the slots to check (None: every logical slot of
    this database); a named slot that does not exist maps to None."""
    cur = await conn.execute(
        "select slot_name, confirmed_flush_lsn::text from pg_replication_slots "
        "where slot_type = 'logical' and database = current_database()"
    )
    found = {str(name): parse_lsn(str(lsn)) if lsn else None for name, lsn in await cur.fetchall()}
    if slots is None:
        return found
    return {s: found.get(s) for s in slots}


# -- init -----------------------------------------------------------------------------


async def init_outbox(
    conn: AConn,
    t: OutboxTable,
    publication: str,
    *,
    days_ahead: int = 7,
    dry_run: bool = False,
    today: date | None = None,
) -> list[str]:
    """Create the outbox table, its partitions and its publication where missing.

    Idempotent. Returns the statements run (or, with ``dry_run``, those that
    would run). ``conn`` must be in autocommit mode.
    """
    today = today or utc_today()
    kind = await _relkind(conn, t)
    if kind is not None and kind != "p":
        raise ConfigError(
            f"{t.qualified} exists and is not a partitioned table (relkind '{kind}')",
            fix="pick another --table, or migrate that table's rows to a partitioned one",
        )
    existing = {p.lower for p in await _partitions(conn, t)} if kind == "p" else set()
    todo: list[sql.Composed] = []
    if kind is None:
        todo += table_statements(t)
    for i in range(days_ahead + 1):
        day = today + timedelta(days=i)
        if _midnight(day) not in existing:
            todo.append(partition_statement(t, day))
    cur = await conn.execute(
        "select puballtables, pubviaroot from pg_publication where pubname = %s", (publication,)
    )
    pub = await cur.fetchone()
    if pub is None:
        todo.append(publication_statement(t, publication))
    else:
        all_tables, via_root = bool(pub[0]), bool(pub[1])
        cur = await conn.execute(
            "select 1 from pg_publication_tables "
            "where pubname = %s and schemaname = %s and tablename = %s",
            (publication, t.schema, t.name),
        )
        if not all_tables and await cur.fetchone() is None:
            raise ConfigError(
                f"publication {publication} exists but does not publish {t.qualified}",
                fix="give the outbox a publication of its own (--publication NAME), so that "
                "only the outbox is decoded and sent",
            )
        if not via_root:
            raise ConfigError(
                f"publication {publication} has publish_via_partition_root off, so outbox rows "
                "would be published under their partitions' names",
                fix=f"ALTER PUBLICATION {sqltext.ident(publication)} "
                "SET (publish_via_partition_root = true)",
            )
    texts = [_text(s) for s in todo]
    if dry_run or not todo:
        return texts
    async with conn.transaction():
        for stmt in todo:
            await conn.execute(stmt)
    log.info("outbox %s: ran %d statement(s)", t.qualified, len(todo))
    return texts


# -- upkeep ---------------------------------------------------------------------------


@dataclass
class MaintainReport:
    """What one upkeep run did (or, dry, would do)."""

    created: list[str] = field(default_factory=list)
    detached: list[tuple[str, Lsn]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # Partitions (attached or detached) kept although expired, and why.
    kept: list[tuple[str, str]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {name}" for name in self.created]
        out += [
            f"detached {name} (its events end before {format_lsn(lsn)})"
            for name, lsn in self.detached
        ]
        out += [f"dropped {name}" for name in self.dropped]
        out += [f"kept {name}: {why}" for name, why in self.kept]
        return out or ["nothing to do"]


def _unconfirmed(positions: dict[str, Lsn | None], needed: Lsn) -> str | None:
    """Why the slots do not prove ``needed`` delivered, or None when they do."""
    if not positions:
        return (
            "no logical replication slot in this database confirms delivery, so nothing "
            "proves its events were streamed (name the slot with --slot)"
        )
    for name, confirmed in sorted(positions.items()):
        if confirmed is None:
            return f"slot {name} does not exist (or has no confirmed position)"
        if confirmed < needed:
            return (
                f"slot {name} has confirmed {format_lsn(confirmed)}, its events end before "
                f"{format_lsn(needed)}: not yet delivered"
            )
    return None


async def _wait_confirmed(
    conn: AConn, slots: Sequence[str] | None, needed: Lsn, wait: float
) -> str | None:
    deadline = time.monotonic() + wait
    while True:
        why = _unconfirmed(await _slot_positions(conn, slots), needed)
        if why is None or time.monotonic() >= deadline:
            return why
        await asyncio.sleep(0.25)  # polling the slot's position, which the engine moves


async def _create_future(
    conn: AConn,
    t: OutboxTable,
    existing: set[datetime],
    days: list[date],
    report: MaintainReport,
    dry_run: bool,
) -> None:
    for day in days:
        if _midnight(day) in existing:
            continue
        stmt = partition_statement(t, day)
        report.statements.append(_text(stmt))
        if dry_run:
            report.created.append(t.partition_name(day))
            continue
        try:
            await conn.execute(stmt)
        except (psycopg.errors.DuplicateTable, psycopg.errors.InvalidObjectDefinition) as e:
            # Another upkeep run got there first (or a partition overlaps).
            log.info("outbox %s: partition for %s not created: %s", t.qualified, day, e)
            continue
        report.created.append(t.partition_name(day))


async def _detach(conn: AConn, t: OutboxTable, part: str, lock_timeout: float) -> Lsn:
    async with conn.transaction():
        await conn.execute(
            "select set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",)
        )
        await conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t.ident, t.partition_ident(part))
        )
        # Every transaction that inserted into the partition has ended (DETACH
        # waited for their locks), so their commit records are before this LSN.
        cur = await conn.execute("select pg_current_wal_insert_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        lsn = parse_lsn(str(row[0]))
        comment = _COMMENT.format(t.qualified, format_lsn(lsn))
        await conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                t.partition_ident(part), sql.Literal(comment)
            )
        )
    return lsn


async def maintain(
    conn: AConn,
    t: OutboxTable,
    *,
    slots: Sequence[str] | None,
    days_ahead: int = 7,
    retention_days: int = 7,
    lock_timeout: float = 2.0,
    confirm_wait: float = 30.0,
    dry_run: bool = False,
    today: date | None = None,
) -> MaintainReport:
    """One upkeep run (module docstring): create the partitions of today and the
    next ``days_ahead`` days, detach those whose whole range is older than
    ``retention_days``, drop detached ones the slots have confirmed past.

    ``slots``: the replication slots whose confirmed position must pass a
    partition's events before it is dropped; None means every logical slot of
    this database. ``conn`` must be in autocommit mode.
    """
    today = today or utc_today()
    report = MaintainReport()
    kind = await _relkind(conn, t)
    if kind != "p":
        raise ConfigError(
            f"outbox table {t.qualified} "
            + ("does not exist" if kind is None else "is not a partitioned table"),
            fix=f"walrelay outbox init --schema {t.schema} --table {t.name}",
        )
    cur = await conn.execute(
        "select pg_try_advisory_lock(hashtext('walrelay.outbox.maintain'), hashtext(%s))",
        (t.qualified,),
    )
    got = await cur.fetchone()
    if not got or not got[0]:
        report.kept.append((t.qualified, "another upkeep run holds the lock; try again later"))
        return report
    try:
        partitions = await _partitions(conn, t)
        days = [today + timedelta(days=i) for i in range(days_ahead + 1)]
        await _create_future(conn, t, {p.lower for p in partitions}, days, report, dry_run)

        cutoff = _midnight(today) - timedelta(days=retention_days)
        for p in partitions:
            if p.upper > cutoff:
                continue
            stmt = sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                t.ident, t.partition_ident(p.name)
            )
            report.statements.append(_text(stmt))
            if dry_run:
                report.kept.append(
                    (p.name, "expired: would be detached, and dropped once the slots confirm it")
                )
                continue
            try:
                lsn = await _detach(conn, t, p.name, lock_timeout)
            except psycopg.errors.LockNotAvailable:
                report.kept.append(
                    (p.name, f"could not lock it within lock_timeout ({lock_timeout:g}s): busy")
                )
                continue
            report.detached.append((p.name, lsn))
            log.info(
                "outbox %s: detached %s (events end before %s)",
                t.qualified,
                p.name,
                format_lsn(lsn),
            )

        pending = await _detached(conn, t)
        if pending:
            needed = max(lsn for _, lsn in pending)
            why = await _wait_confirmed(conn, slots, needed, 0.0 if dry_run else confirm_wait)
            positions = await _slot_positions(conn, slots)
            for name, lsn in pending:
                reason = _unconfirmed(positions, lsn) if why is not None else None
                stmt = sql.SQL("DROP TABLE {}").format(t.partition_ident(name))
                if reason is not None:
                    report.kept.append((name, reason))
                    continue
                report.statements.append(_text(stmt))
                if dry_run:
                    report.dropped.append(name)
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "select set_config('lock_timeout', %s, true)",
                            (f"{int(lock_timeout * 1000)}ms",),
                        )
                        await conn.execute(stmt)
                except psycopg.errors.LockNotAvailable:
                    report.kept.append((name, f"in use: not locked within {lock_timeout:g}s"))
                    continue
                report.dropped.append(name)
                log.info("outbox %s: dropped %s", t.qualified, name)
                failpoints.hit(failpoints.OUTBOX_AFTER_PARTITION_DROP)
        if not dry_run:
            for name, reason in report.kept:
                log.warning("outbox %s: kept %s: %s", t.qualified, name, reason)
    finally:
        with contextlib.suppress(psycopg.Error):  # a broken connection drops the lock anyway
            await conn.execute(
                "select pg_advisory_unlock(hashtext('walrelay.outbox.maintain'), hashtext(%s))",
                (t.qualified,),
            )
    return report


async def upkeep_loop(
    dsn: str,
    table: str,
    *,
    slot: str,
    interval: float,
    days_ahead: int,
    retention_days: int,
    lock_timeout: float,
    confirm_wait: float,
    on_report: Callable[[MaintainReport], None] | None = None,
) -> None:
    """The engine's schedule: :func:`maintain` at start and every ``interval``
    (checking the engine's own slot), until cancelled. Failures are logged and
    tried again at the next run: upkeep is never a reason to stop streaming."""
    t = OutboxTable.parse(table)
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="walrelay-outbox-upkeep"
            )
            async with conn:
                report = await maintain(
                    conn,
                    t,
                    slots=[slot],
                    days_ahead=days_ahead,
                    retention_days=retention_days,
                    lock_timeout=lock_timeout,
                    confirm_wait=confirm_wait,
                )
            if on_report is not None:
                on_report(report)
            if report.created or report.dropped or report.detached:
                log.info("outbox %s upkeep: %s", t.qualified, "; ".join(report.lines()))
        except (psycopg.Error, OSError, ConfigError) as e:
            log.warning(
                "outbox %s upkeep failed: %s; trying again in %.0fs", t.qualified, e, interval
            )
        except Exception:  # a bug must not end upkeep silently
            log.exception("outbox %s upkeep failed; trying again in %.0fs", t.qualified, interval)
        await asyncio.sleep(interval)  # the upkeep schedule
