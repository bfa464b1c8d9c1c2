"""Backfills on demand while streaming: watermarks, keyset chunks, resumable.

``walrelay backfill`` (walrelay.cli.backfill) stores a request in
``<state schema>.backfills``; the running engine polls that table and runs
the requests one at a time, in this process, because the chunk rows must
meet the replication stream (DBLog-style, https://arxiv.org/abs/2010.12597):

1. emit a *low watermark*: ``pg_logical_emit_message(true,
   'walrelay.watermark', '{"backfill": id, "chunk": n, "kind": "low"}')``;
2. read the next chunk by keyset (``where key > cursor order by key limit
   chunk_size``, plus ``--where``), in its own statement and snapshot, taken
   after the low watermark committed;
3. emit the *high watermark*.

When the stream reaches the low watermark the engine starts recording the
keys of the table changed in the stream (events routed to the backfill's
destination); at the high watermark it drops the chunk rows whose keys
changed in between -- the stream carries a newer version of them -- and
hands the remaining rows to the destination as ``read`` events *inside the
high watermark's transaction* (ids ``<hw commit_lsn>/1..n``). So a row is
never delivered stale after its newer change: a change committed before the
low watermark is ahead of the read row in the stream; a change between the
watermarks drops the row; a change after the high watermark comes after it.

The cursor (the last key read) and the counts are saved in the state
database only once the slot may be confirmed past the high watermark (every
read event of the chunk delivered or parked): a crash re-reads at most the
chunk in progress, and a restarted engine resumes the request from its
cursor. Watermark messages are never delivered to destinations.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from walrelay.source.snapshot import (
    ensure_state,
)

log = logging.getLogger("walrelay.source.backfill")

WATERMARK_PREFIX = "walrelay.watermark"


# -- requests, for the CLI ---------------------------------------------------------------


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
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await ensure_state(conn, schema)
        cur = await conn.execute(
            sql.SQL(
                "insert into {}.backfills (slot, destination, table_name, where_sql, rate, "
                "chunk_size) values (%s, %s, %s, %s, %s, %s) returning id"
            ).format(sql.Identifier(schema)),
            (slot, destination, table, where, rate, chunk_size),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def read_backfill(dsn: str, schema: str, request_id: int) -> dict[str, Any] | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL(
                "select id, destination, table_name, status, rows_done, rows_estimated, "
                "chunks_done, cursor, error, extract(epoch from started_at), "
                "extract(epoch from coalesce(finished_at, now())) from {}.backfills where id = %s"
            ).format(sql.Identifier(schema)),
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
