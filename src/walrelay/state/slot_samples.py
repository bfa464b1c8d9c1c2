"""Samples of ``pg_replication_slots`` kept by walrelay itself: ``<schema>.slot_samples``.

Before PostgreSQL 17 the server does not say since when a slot is inactive,
and nothing says whether its retained WAL grew while its published tables
were quiet. So every ``walrelay doctor`` run, and a running engine every
``monitor.samples.interval``, records per slot whether it was active (and
since when it is not), its confirmed position, the WAL position and the
write count of the published tables; the next doctor run compares.

``slot_samples`` holds the latest sample of each slot;
``slot_sample_history`` every sample (retained WAL, confirmed-flush lag,
``safe_wal_size``, ``wal_status``) for ``monitor.samples.retention``, from
which the doctor estimates how fast a slot's retained WAL grows and when it
reaches the cap or fills the disk. Times come from the server's clock
(``now()``), never the client's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

__all__ = [
    "HistoryPoint",
    "SlotObservation",
    "SlotSample",
    "history_migration_statements",
    "migration_statements",
    "read_history",
    "record",
    "record_async",
]


def migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL(
            "create table if not exists {}.slot_samples ("
            "slot_name text primary key, database text, active boolean not null, "
            "inactive_since timestamptz, sampled_at timestamptz not null default now(), "
            "confirmed_flush_lsn pg_lsn, wal_lsn pg_lsn not null, published_writes bigint)"
        ).format(s)
    ]


def history_migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL(
            "create table if not exists {}.slot_sample_history ("
            "slot_name text not null, sampled_at timestamptz not null default now(), "
            "recorded_by text not null, active boolean not null, wal_status text, "
            "wal_lsn pg_lsn not null, confirmed_flush_lsn pg_lsn, retained_bytes bigint, "
            "confirmed_lag_bytes bigint, safe_wal_size bigint, published_writes bigint)"
        ).format(s),
        sql.SQL(
            "create index if not exists slot_sample_history_slot on {}.slot_sample_history "
            "(slot_name, sampled_at)"
        ).format(s),
        # Pruning deletes by age across slots.
        sql.SQL(
            "create index if not exists slot_sample_history_time on {}.slot_sample_history "
            "(sampled_at)"
        ).format(s),
    ]


@dataclass(frozen=True)
class SlotObservation:
    """One slot as a doctor run sees it now."""

    slot: str
    database: str | None
    active: bool
    confirmed_flush_lsn: str | None
    wal_lsn: str
    published_writes: int | None
    """Inserts + updates + deletes of the published tables of the slot's
    database (None: the slot is in another database than the one read)."""
    wal_status: str | None = None
    retained_bytes: int | None = None  # current WAL position - restart_lsn
    confirmed_lag_bytes: int | None = None  # current WAL position - confirmed_flush_lsn
    safe_wal_size: int | None = None


@dataclass(frozen=True)
class HistoryPoint:
    """One sample of ``slot_sample_history``, ``age_seconds`` before the read (server clock)."""

    age_seconds: float
    active: bool
    wal_status: str | None
    wal_lsn: str
    confirmed_flush_lsn: str | None
    retained_bytes: int | None
    confirmed_lag_bytes: int | None
    safe_wal_size: int | None
    published_writes: int | None


@dataclass(frozen=True)
class SlotSample:
    """What was recorded for a slot, and how long ago (server clock)."""

    slot: str
    active: bool
    inactive_seconds: float | None
    """How long it has been inactive without a break in the samples (None: active)."""
    age_seconds: float
    confirmed_flush_lsn: str | None
    wal_lsn: str
    published_writes: int | None


_SELECT = """
select slot_name, active,
       extract(epoch from now() - inactive_since)::float8,
       extract(epoch from now() - sampled_at)::float8,
       confirmed_flush_lsn::text, wal_lsn::text, published_writes
from {}.slot_samples
"""

_UPSERT = """
insert into {}.slot_samples as s (slot_name, database, active, inactive_since, sampled_at,
                                  confirmed_flush_lsn, wal_lsn, published_writes)
values (%(slot)s, %(database)s, %(active)s,
        case when %(active)s then null else now() end, now(),
        %(confirmed)s::pg_lsn, %(wal)s::pg_lsn, %(writes)s)
on conflict (slot_name) do update set
  database = excluded.database,
  active = excluded.active,
  inactive_since = case when excluded.active then null
                        else coalesce(s.inactive_since, excluded.inactive_since) end,
  sampled_at = excluded.sampled_at,
  confirmed_flush_lsn = excluded.confirmed_flush_lsn,
  wal_lsn = excluded.wal_lsn,
  published_writes = excluded.published_writes
returning extract(epoch from now() - inactive_since)::float8
"""

_FORGET = "delete from {}.slot_samples where slot_name <> all(%s)"

_HISTORY_INSERT = """
insert into {}.slot_sample_history (slot_name, recorded_by, active, wal_status, wal_lsn,
  confirmed_flush_lsn, retained_bytes, confirmed_lag_bytes, safe_wal_size, published_writes)
values (%(slot)s, %(by)s, %(active)s, %(wal_status)s, %(wal)s::pg_lsn, %(confirmed)s::pg_lsn,
        %(retained)s, %(confirmed_lag)s, %(safe)s, %(writes)s)
"""

_PRUNE = "delete from {}.slot_sample_history where sampled_at < now() - make_interval(secs => %s)"

_HISTORY = """
select slot_name, extract(epoch from now() - sampled_at)::float8, active, wal_status,
       wal_lsn::text, confirmed_flush_lsn::text, retained_bytes, confirmed_lag_bytes,
       safe_wal_size, published_writes
from {}.slot_sample_history
where sampled_at >= now() - make_interval(secs => %s)
order by slot_name, sampled_at
"""


def _params(o: SlotObservation, recorded_by: str = "") -> dict[str, Any]:
    return {
        "slot": o.slot,
        "database": o.database,
        "active": o.active,
        "confirmed": o.confirmed_flush_lsn,
        "wal": o.wal_lsn,
        "writes": o.published_writes,
        "by": recorded_by,
        "wal_status": o.wal_status,
        "retained": o.retained_bytes,
        "confirmed_lag": o.confirmed_lag_bytes,
        "safe": o.safe_wal_size,
    }


def record(
    conn: psycopg.Connection[Any],
    schema: str,
    slots: Sequence[SlotObservation],
    *,
    recorded_by: str = "doctor",
) -> tuple[dict[str, SlotSample], dict[str, float | None]]:
    """Record ``slots`` (forgetting slots that are gone) in one transaction,
    in the latest samples and in the history.

    Returns the previous samples by slot name, and per slot how long it has
    been inactive according to the samples (0 when this run is the first to
    see it inactive; None when active).
    """
    s = sql.Identifier(schema)
    with conn.transaction():
        previous = {
            row[0]: SlotSample(
                slot=row[0],
                active=bool(row[1]),
                inactive_seconds=row[2],
                age_seconds=float(row[3]),
                confirmed_flush_lsn=row[4],
                wal_lsn=row[5],
                published_writes=row[6],
            )
            for row in conn.execute(sql.SQL(_SELECT).format(s))
        }
        conn.execute(sql.SQL(_FORGET).format(s), ([o.slot for o in slots],))
        inactive: dict[str, float | None] = {}
        for o in slots:
            row = conn.execute(sql.SQL(_UPSERT).format(s), _params(o)).fetchone()
            inactive[o.slot] = None if row is None or row[0] is None else float(row[0])
        if slots:
            conn.cursor().executemany(
                sql.SQL(_HISTORY_INSERT).format(s), [_params(o, recorded_by) for o in slots]
            )
    return previous, inactive


async def record_async(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    slots: Sequence[SlotObservation],
    *,
    recorded_by: str,
    retention_seconds: float,
) -> tuple[int, dict[str, float | None]]:
    """What :func:`record` writes, from an engine (nothing is read back), and
    the history older than ``retention_seconds`` pruned, in one short
    transaction. Returns how many old samples were pruned, and per slot how
    long the samples have seen it inactive (as :func:`record`)."""
    s = sql.Identifier(schema)
    inactive: dict[str, float | None] = {}
    async with conn.transaction():
        await conn.execute(sql.SQL(_FORGET).format(s), ([o.slot for o in slots],))
        for o in slots:
            cur = await conn.execute(sql.SQL(_UPSERT).format(s), _params(o))
            row = await cur.fetchone()
            inactive[o.slot] = None if row is None or row[0] is None else float(row[0])
        if slots:
            await conn.cursor().executemany(
                sql.SQL(_HISTORY_INSERT).format(s), [_params(o, recorded_by) for o in slots]
            )
        cur = await conn.execute(sql.SQL(_PRUNE).format(s), (retention_seconds,))
        return max(cur.rowcount, 0), inactive


def read_history(
    conn: psycopg.Connection[Any], schema: str, window_seconds: float
) -> dict[str, list[HistoryPoint]]:
    """The samples of the last ``window_seconds`` by slot, oldest first."""
    out: dict[str, list[HistoryPoint]] = {}
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.SQL(_HISTORY).format(sql.Identifier(schema)), (window_seconds,))
        for row in cur:
            out.setdefault(row[0], []).append(HistoryPoint(float(row[1]), bool(row[2]), *row[3:]))
    return out
