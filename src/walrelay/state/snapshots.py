"""The snapshots table: ``<state schema>.snapshots`` (created by state migration 5).

One row per slot: the ``consistent_point`` of the slot's initial snapshot
and its ``status``: ``running`` until every snapshot row is delivered or
parked, then ``done``. A snapshot found ``running`` when walrelay starts did
not finish: on the existing slot, it is resumed as backfills of its tables
(:func:`resume_as_backfills`, status ``resumed``), chunked between
watermarks; without the slot, a new slot takes a new snapshot.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from walrelay import failpoints
from walrelay.model import Lsn, format_lsn
from walrelay.state.migrations import migrate

__all__ = ["record_snapshot", "resume_as_backfills", "snapshot_status"]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


async def snapshot_status(conn: Conn, schema: str, slot: str) -> str | None:
    """The recorded status of the slot's initial snapshot (None: none recorded,
    or the state schema does not exist yet)."""
    table = sql.Identifier(schema, "snapshots")
    cur = await conn.execute("select to_regclass(%s)", (table.as_string(conn),))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    query = sql.SQL("select status from {} where slot = %s").format(table)
    cur = await conn.execute(query, (slot,))
    row = await cur.fetchone()
    if row is None:
        return None
    value = row[0]
    return value.decode() if isinstance(value, bytes) else str(value)


async def record_snapshot(dsn: str, schema: str, slot: str, point: Lsn, status: str) -> None:
    """Record the slot's snapshot at ``point`` as ``status`` (``running`` or ``done``),
    creating the state schema first when needed."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, schema)
        await conn.execute(
            sql.SQL(
                "insert into {t} (slot, consistent_point, status) values (%s, %s, %s) "
                "on conflict (slot) do update set consistent_point = excluded.consistent_point, "
                "status = excluded.status, started_at = case when excluded.status = 'running' "
                "then now() else {t}.started_at end, "
                "finished_at = case when excluded.status = 'done' then now() end"
            ).format(t=sql.Identifier(schema, "snapshots")),
            (slot, format_lsn(point), status),
        )
    failpoints.hit(failpoints.SNAPSHOT_AFTER_RECORD)


async def resume_as_backfills(
    dsn: str, schema: str, slot: str, pairs: list[tuple[str, str]], *, chunk_size: int = 5000
) -> list[int]:
    """In one transaction: a backfill request per (destination, table) of the
    unfinished snapshot, and the snapshot marked ``resumed``. Returns the ids."""
    ids: list[int] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, schema)
        async with conn.transaction():
            for destination, table in pairs:
                cur = await conn.execute(
                    sql.SQL(
                        "insert into {} (slot, destination, table_name, chunk_size) "
                        "values (%s, %s, %s, %s) returning id"
                    ).format(sql.Identifier(schema, "backfills")),
                    (slot, destination, table, chunk_size),
                )
                row = await cur.fetchone()
                assert row is not None
                ids.append(int(row[0]))
            await conn.execute(
                sql.SQL("update {} set status = 'resumed' where slot = %s").format(
                    sql.Identifier(schema, "snapshots")
                ),
                (slot,),
            )
    return ids
