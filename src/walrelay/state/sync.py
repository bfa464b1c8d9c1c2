"""Two-way sync's tables in the state schema of every node: tombstones and conflicts.

``tombstones`` remembers, per synced table and key, the transactions that
deleted the row (one row each: an older delete applied later must not hide a
newer one) (filled by the ``sync_record_delete`` trigger that
``walrelay sync`` puts on every synced table), so that an update arriving
for a deleted row can be told apart: deleted *after* the update was made
(``update_deleted``) or before (``update_missing``). Its commit time and
origin come from ``pg_xact_commit_timestamp_origin(xid)``.

``sync_prev_<hash of the table name>`` is the ``BEFORE UPDATE OR DELETE``
trigger function of each synced table: for a local write (not walrelay's own apply, which sets
``walrelay.sync_applying``) it logs, in the same transaction, a logical
message (prefix :data:`OVERWRITTEN_PREFIX`) naming the origin and commit time
of the row version being replaced, so that the node applying the change can
tell whether the writer had seen its version (see
:func:`walrelay.sync.conflicts.overrides_unseen`).

``conflicts`` is the log of every conflict and how it was resolved
(``walrelay sync conflicts`` reads it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

__all__ = [
    "APPLYING_SETTING",
    "OVERWRITTEN_PREFIX",
    "ConflictRecord",
    "insert_conflict",
    "migration_statements",
    "note_previous_function",
    "read_conflicts",
    "record_tombstone",
    "tombstone_of",
    "trim_tombstones",
]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

OVERWRITTEN_PREFIX = "walrelay_sync_prev"
"""Logical message before each local update/delete: ``<origin name> <epoch seconds>``
(empty origin name: a local write)."""
APPLYING_SETTING = "walrelay.sync_applying"
"""Set (transaction-local) by the applier, so that its writes log nothing."""


def note_previous_function(
    s: sql.Identifier, table: str, table_ident: sql.Composable, keys: list[str]
) -> tuple[sql.Composed, sql.Composed]:
    """``(create statement, qualified name)`` of the trigger function of one
    synced table. One function per table, with static SQL (a plan cached by
    PL/pgSQL: a dynamic lookup made the trigger several times dearer).
    SECURITY DEFINER: the commit-timestamp and origin catalogs are not
    readable by every writer. The message is ``{"o": origin name or "",
    "t": "<epoch seconds>", "k": [key as text]}``."""
    function = sql.SQL("{}.{}").format(
        s, sql.Identifier(f"sync_prev_{hashlib.md5(table.encode()).hexdigest()[:16]}")
    )
    old_key = sql.SQL(", ").join(sql.SQL("OLD.{}::text").format(sql.Identifier(k)) for k in keys)
    where = sql.SQL(" and ").join(
        sql.SQL("t.{} = OLD.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in keys
    )
    create = sql.SQL(
        "create or replace function {}() returns trigger "
        "language plpgsql security definer set search_path = pg_catalog as $fn$ "
        "declare x xid; ts timestamptz; ro oid; "
        "begin "
        "if coalesce(current_setting({}, true), '') <> 'on' then "
        "select t.xmin into x from {} t where {}; "
        "if x is not null and x::text <> (pg_current_xact_id()::xid)::text then "
        "select c.timestamp, c.roident into ts, ro from pg_xact_commit_timestamp_origin(x) c; "
        "if ts is not null then "
        "perform pg_logical_emit_message(true, {}, json_build_object("
        "'o', coalesce((select roname from pg_replication_origin where roident = ro), ''), "
        "'t', extract(epoch from ts)::text, 'k', array[{}])::text); "
        "end if; end if; end if; "
        "if TG_OP = 'DELETE' then return OLD; end if; "
        "return NEW; "
        "end $fn$"
    ).format(
        function,
        sql.Literal(APPLYING_SETTING),
        table_ident,
        where,
        sql.Literal(OVERWRITTEN_PREFIX),
        old_key,
    )
    return create, function


def migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL(
            "create table if not exists {}.tombstones ("
            "table_name text not null, key text[] not null, xid xid8 not null, "
            "primary key (table_name, key, xid))"
        ).format(s),
        sql.SQL(
            "create table if not exists {}.conflicts ("
            "id bigserial primary key, detected_at timestamptz not null default now(), "
            "sync_name text not null, table_name text not null, key jsonb not null, "
            "conflict text not null, "
            "local_row jsonb, local_origin text, local_committed_at timestamptz, "
            "remote_row jsonb, remote_origin text not null, remote_committed_at timestamptz, "
            "resolution text not null)"
        ).format(s),
        sql.SQL(
            "create index if not exists conflicts_table_time on {}.conflicts "
            "(table_name, detected_at)"
        ).format(s),
        # TG_ARGV holds the key columns; their text forms are what pgoutput sends.
        sql.SQL(
            "create or replace function {}.sync_record_delete() returns trigger "
            "language plpgsql as $fn$ "
            "declare k text[]; "
            "begin "
            "execute format('select array[%s]::text[]', "
            "(select string_agg(format('($1).%I::text', a), ', ') from unnest(TG_ARGV) a)) "
            "into k using OLD; "
            "insert into {}.tombstones (table_name, key, xid) "
            "values (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, k, pg_current_xact_id()) "
            "on conflict do nothing; "
            "return OLD; "
            "end $fn$"
        ).format(s, s),
    ]


async def tombstone_of(
    conn: Conn, schema: str, table: str, key: list[Any]
) -> tuple[datetime | None, int] | None:
    """(commit time, origin id) of the last committed delete of ``key``, or None."""
    cur = await conn.execute(
        sql.SQL(
            "select c.timestamp, c.roident from {}.tombstones t "
            "cross join lateral pg_xact_commit_timestamp_origin(t.xid::xid) c "
            "where t.table_name = %s and t.key = %s::text[] "
            "order by c.timestamp desc nulls last limit 1"
        ).format(sql.Identifier(schema)),
        (table, key),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return row[0], int(row[1] or 0)


async def record_tombstone(conn: Conn, schema: str, table: str, key: list[Any]) -> None:
    """Record a delete of ``key`` by the current transaction (as the trigger does)."""
    await conn.execute(
        sql.SQL(
            "insert into {}.tombstones (table_name, key, xid) "
            "values (%s, %s::text[], pg_current_xact_id()) on conflict do nothing"
        ).format(sql.Identifier(schema)),
        (table, key),
    )


async def trim_tombstones(conn: Conn, schema: str, older_than: datetime) -> int:
    """Forget deletes committed before ``older_than`` (every node has passed them)."""
    cur = await conn.execute(
        sql.SQL(
            "delete from {}.tombstones t where coalesce("
            "(select c.timestamp from pg_xact_commit_timestamp_origin(t.xid::xid) c), "
            "'-infinity') < %s"
        ).format(sql.Identifier(schema)),
        (older_than,),
    )
    return cur.rowcount


@dataclass(frozen=True, slots=True, kw_only=True)
class ConflictRecord:
    """One row of ``conflicts``, as the applier writes it."""

    table: str
    key: dict[str, Any]
    conflict: str
    local_row: dict[str, Any] | None
    local_origin: str | None
    local_committed_at: datetime | None
    remote_row: dict[str, Any] | None
    remote_origin: str
    remote_committed_at: datetime | None
    resolution: str


async def insert_conflict(conn: Conn, schema: str, sync_name: str, c: ConflictRecord) -> None:
    await conn.execute(
        sql.SQL(
            "insert into {}.conflicts (sync_name, table_name, key, conflict, local_row, "
            "local_origin, local_committed_at, remote_row, remote_origin, "
            "remote_committed_at, resolution) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(schema)),
        (
            sync_name,
            c.table,
            Jsonb(c.key),
            c.conflict,
            None if c.local_row is None else Jsonb(c.local_row),
            c.local_origin,
            c.local_committed_at,
            None if c.remote_row is None else Jsonb(c.remote_row),
            c.remote_origin,
            c.remote_committed_at,
            c.resolution,
        ),
    )


def read_conflicts(
    conn: psycopg.Connection[dict[str, Any]],
    schema: str,
    sync_name: str,
    table: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    where: sql.Composable = sql.SQL("sync_name = %s")
    params: list[Any] = [sync_name]
    if table is not None:
        where = sql.SQL("{} and table_name = %s").format(where)
        params.append(table)
    params.append(limit)
    cur = conn.execute(
        sql.SQL(
            "select id, detected_at, table_name, key, conflict, local_row, local_origin, "
            "local_committed_at, remote_row, remote_origin, remote_committed_at, resolution "
            "from {}.conflicts where {} order by id desc limit %s"
        ).format(sql.Identifier(schema), where),
        params,
    )
    return list(reversed(cur.fetchall()))
