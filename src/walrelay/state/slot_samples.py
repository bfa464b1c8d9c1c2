"""Samples of ``pg_replication_slots`` kept by walrelay itself: ``<schema>.slot_samples``.

Before PostgreSQL 17 the server does not say since when a slot is inactive,
and nothing says whether its retained WAL grew while its published tables
were quiet. So every ``walrelay doctor`` run records, per slot, whether it was
active (and since when it is not), its confirmed position, the WAL position
and the write count of the published tables; the next run compares. Times
come from the server's clock (``now()``), never the client's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["SlotObservation", "SlotSample", "migration_statements", "record"]


def migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL(
            "create table if not exists {}.slot_samples ("
            "slot_name text primary key, database text, active boolean not null, "
            "inactive_since timestamptz, sampled_at timestamptz not null default now(), "
            "confirmed_flush_lsn pg_lsn, wal_lsn pg_lsn not null, published_writes bigint)"
        ).format(s)
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


def record(
    conn: psycopg.Connection[Any], schema: str, slots: Sequence[SlotObservation]
) -> tuple[dict[str, SlotSample], dict[str, float | None]]:
    """Record ``slots`` (forgetting slots that are gone) in one transaction.

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
        conn.execute(
            sql.SQL("delete from {}.slot_samples where slot_name <> all(%s)").format(s),
            ([o.slot for o in slots],),
        )
        inactive: dict[str, float | None] = {}
        for o in slots:
            row = conn.execute(
                sql.SQL(_UPSERT).format(s),
                {
                    "slot": o.slot,
                    "database": o.database,
                    "active": o.active,
                    "confirmed": o.confirmed_flush_lsn,
                    "wal": o.wal_lsn,
                    "writes": o.published_writes,
                },
            ).fetchone()
            inactive[o.slot] = None if row is None or row[0] is None else float(row[0])
    return previous, inactive
