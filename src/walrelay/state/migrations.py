"""walrelay's own tables, in a schema of the state database, versioned.

Each migration is applied once, in order, inside one transaction holding an
advisory lock, so two processes starting together cannot race. The schema
name comes from config and is always quoted through ``sql.Identifier``.
The schema is never added to a publication (walrelay only publishes the
tables listed in ``source.tables``).

Each table's reads and writes live in a module of its own next to this one
(``failed.py``, ``snapshots.py``, ``backfills.py``, ``ledger.py``).

To add a migration: append a ``Migration`` with the next version number to
``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from walrelay.state.parking import migration_statements as failed_events_statements
from walrelay.state.parking import rename_migration_statements as parked_events_rename
from walrelay.state.parking import revision_migration_statements as failed_revision_statements
from walrelay.state.parking import route_migration_statements as failed_route_statements
from walrelay.state.slot_samples import history_migration_statements as slot_history_statements
from walrelay.state.slot_samples import migration_statements as slot_samples_statements
from walrelay.state.sync import migration_statements as sync_statements

log = logging.getLogger("walrelay.state")

_LOCK_KEY = 0x57414C52  # "WALR": serialises migrations across processes


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    # Builds the statements for a given schema identifier.
    statements: Callable[[sql.Identifier], list[sql.Composed]]


def _v1(s: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL(
            "create table if not exists {}.meta (key text primary key, value text not null)"
        ).format(s),
    ]


def _v3_ledger(s: sql.Identifier) -> list[sql.Composed]:
    """The delivery ledger (read and written by walrelay.state.ledger)."""
    return [
        sql.SQL(
            "create table if not exists {}.ledger ("
            "destination text not null, event_id text not null, commit_lsn pg_lsn not null, "
            "recorded_at timestamptz not null default now(), "
            "primary key (destination, event_id))"
        ).format(s),
        sql.SQL(
            "create index if not exists ledger_destination_lsn on {}.ledger "
            "(destination, commit_lsn)"
        ).format(s),
    ]


def _v5_snapshots(s: sql.Identifier) -> list[sql.Composed]:
    """Initial snapshots and backfill requests (walrelay.state.snapshots / backfills)."""
    return [
        sql.SQL(
            "create table if not exists {}.snapshots ("
            "slot text primary key, consistent_point pg_lsn not null, "
            "status text not null, started_at timestamptz not null default now(), "
            "finished_at timestamptz)"
        ).format(s),
        sql.SQL(
            "create table if not exists {}.backfills ("
            "id bigserial primary key, slot text not null, destination text not null, "
            "table_name text not null, where_sql text, rate double precision, "
            "chunk_size int not null default 5000, "
            "status text not null default 'pending', cursor jsonb, "
            "rows_done bigint not null default 0, rows_estimated bigint not null default 0, "
            "chunks_done int not null default 0, error text, "
            "created_at timestamptz not null default now(), started_at timestamptz, "
            "updated_at timestamptz not null default now(), finished_at timestamptz)"
        ).format(s),
        sql.SQL(
            "create index if not exists backfills_slot_status on {}.backfills (slot, status)"
        ).format(s),
    ]


MIGRATIONS: list[Migration] = [
    Migration(1, "meta table", _v1),
    Migration(2, "failed events", failed_events_statements),
    Migration(3, "delivery ledger", _v3_ledger),
    Migration(4, "failed events: route", failed_route_statements),
    Migration(5, "snapshots and backfills", _v5_snapshots),
    Migration(6, "failed events: revision", failed_revision_statements),
    Migration(7, "failed_events renamed parked_events", parked_events_rename),
    Migration(8, "two-way sync: tombstones and conflicts", sync_statements),
    Migration(9, "slot samples (doctor)", slot_samples_statements),
    Migration(10, "slot sample history (engine and doctor)", slot_history_statements),
]


async def current_version(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> int:
    cur = await conn.execute(
        "select 1 from pg_tables where schemaname = %s and tablename = 'schema_version'",
        (schema,),
    )
    if await cur.fetchone() is None:
        return 0
    cur = await conn.execute(
        sql.SQL("select coalesce(max(version), 0) from {}.schema_version").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    return int(str(row[0])) if row else 0


async def migrate(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str = "walrelay",
    migrations: list[Migration] | None = None,
) -> int:
    """Bring ``schema`` up to the newest version. Returns the version reached.

    ``conn`` must be in autocommit mode; the migration runs in its own
    transaction.
    """
    steps = MIGRATIONS if migrations is None else migrations
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(sql.SQL("create schema if not exists {}").format(ident))
        await conn.execute(
            sql.SQL(
                "create table if not exists {}.schema_version ("
                "version int primary key, description text not null, "
                "applied_at timestamptz not null default now())"
            ).format(ident)
        )
        cur = await conn.execute(sql.SQL("select version from {}.schema_version").format(ident))
        applied = {int(str(r[0])) for r in await cur.fetchall()}
        version = max(applied, default=0)
        newest = max((m.version for m in steps), default=0)
        if version > newest:
            raise RuntimeError(
                f"state schema {schema} is at version {version}, newer than this walrelay "
                f"knows ({newest}): upgrade walrelay"
            )
        # Every missing version, not only those above the highest applied: a
        # database may have met a later migration before an earlier one existed.
        for m in sorted(steps, key=lambda m: m.version):
            if m.version in applied:
                continue
            for stmt in m.statements(ident):
                await conn.execute(stmt)
            await conn.execute(
                sql.SQL(
                    "insert into {}.schema_version (version, description) values (%s, %s)"
                ).format(ident),
                (m.version, m.description),
            )
            log.info("state schema %s: applied migration %d (%s)", schema, m.version, m.description)
            version = max(version, m.version)
    return version
