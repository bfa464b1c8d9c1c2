"""The backfill requests table: ``<state schema>.backfills`` (created by state migration 5).

``walrelay backfill`` stores a request (:func:`submit_backfill`) and watches
its row (:func:`read_backfill`); the running engine takes the oldest open
request of its slot (:func:`next_backfill`) and writes its progress back
(:func:`update_backfill`): ``status`` (``pending``, ``running``, ``done``,
``failed``), the ``cursor`` (the last key read, as JSON) and the counts. How a
backfill meets the stream is told in :mod:`walrelay.source.backfill`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from walrelay.state.migrations import migrate

__all__ = [
    "BackfillRequest",
    "next_backfill",
    "read_backfill",
    "submit_backfill",
    "update_backfill",
]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def _table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "backfills")


@dataclass
class BackfillRequest:
    """One open request, as the engine runs it."""

    id: int
    destination: str
    table: str
    where: str | None
    rate: float | None
    chunk_size: int
    cursor: list[str] | None
    rows_done: int
    chunks_done: int


async def submit_backfill(
    dsn: str,
    schema: str,
    *,
    slot: str,
    destination: str,
    table: str,
    where: str | None,
    rate: float | None,
    chunk_size: int,
) -> int:
    """Store a request (creating the state schema when needed); returns its id."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, schema)
        cur = await conn.execute(
            sql.SQL(
                "insert into {} (slot, destination, table_name, where_sql, rate, "
                "chunk_size) values (%s, %s, %s, %s, %s, %s) returning id"
            ).format(_table(schema)),
            (slot, destination, table, where, rate, chunk_size),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def read_backfill(dsn: str, schema: str, request_id: int) -> dict[str, Any] | None:
    """A request's progress as a dict (None: no such request)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL(
                "select id, destination, table_name, status, rows_done, rows_estimated, "
                "chunks_done, cursor, error, extract(epoch from started_at), "
                "extract(epoch from coalesce(finished_at, now())) from {} where id = %s"
            ).format(_table(schema)),
            (request_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    keys = (
        "id",
        "destination",
        "table",
        "status",
        "rows_done",
        "rows_estimated",
        "chunks_done",
        "cursor",
        "error",
        "started_at",
        "now",
    )
    doc = dict(zip(keys, row, strict=True))
    for k in ("started_at", "now"):
        doc[k] = None if doc[k] is None else float(doc[k])
    return doc


async def next_backfill(
    conn: Conn, schema: str, slot: str, destinations: list[str]
) -> BackfillRequest | None:
    """The oldest pending or running request of ``slot`` for one of ``destinations``."""
    cur = await conn.execute(
        sql.SQL(
            "select id, destination, table_name, where_sql, rate, chunk_size, cursor, "
            "rows_done, chunks_done from {} "
            "where slot = %s and destination = any(%s) and status in ('pending', 'running') "
            "order by id limit 1"
        ).format(_table(schema)),
        (slot, destinations),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return BackfillRequest(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        None if row[3] is None else str(row[3]),
        None if row[4] is None else float(row[4]),
        int(row[5]),
        None if row[6] is None else [str(v) for v in row[6]],
        int(row[7]),
        int(row[8]),
    )


async def update_backfill(dsn: str, schema: str, request_id: int, **values: Any) -> None:
    """Set columns of a request (``status=``, ``cursor=``, ``rows_done=``, ...);
    ``updated_at`` moves to now."""
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("update {} set {}, updated_at = now() where id = %s").format(
                _table(schema), sets
            ),
            (*values.values(), request_id),
        )
