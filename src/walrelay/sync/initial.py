"""``walrelay sync --initial copy-from NODE``: align the tables before syncing.

Consistent with the slots, through the same exported-snapshot machinery as the
engine's initial snapshot (:mod:`walrelay.source.slot`,
:mod:`walrelay.source.snapshot`):

1. every other node is prepared first (its slot exists from then on, so
   nothing written there later is missed);
2. the source node's slot is created with an exported snapshot;
3. on each other node, **one** transaction under the source node's
   replication origin empties the tables, copies them from the snapshot
   (``COPY ... TO STDOUT`` into ``COPY ... FROM STDIN``, the columns both
   nodes have) and sets the origin's progress to the slot's consistent
   point: the direction from the source starts exactly after the copy, and
   the other nodes' readers drop the copy as an echo.

Only for a new sync: when a slot of the sync exists, the copy could not be
consistent with it and ``--initial`` refuses. Nothing should write to the
other nodes' tables during the copy (their changes would be replaced).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from walrelay.errors import ConfigError
from walrelay.model import format_lsn
from walrelay.source.snapshot import connect_reader, import_snapshot
from walrelay.sync.catalog import NodeTables, prepare_node
from walrelay.sync.config import SyncSettings

__all__ = ["copy_from"]

log = logging.getLogger("walrelay.sync")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


async def copy_from(
    settings: SyncSettings,
    source: str,
    conns: dict[str, Conn],
    tables: dict[str, NodeTables],
) -> None:
    for node, conn in conns.items():
        cur = await conn.execute(
            "select 1 from pg_replication_slots where slot_name = %s", (settings.slot(node),)
        )
        if await cur.fetchone() is not None:
            raise ConfigError(
                f"--initial copy-from {source}: node {node} already has the slot "
                f"{settings.slot(node)}, so this sync has run before",
                fix="start without --initial (it resumes), or drop the sync's slots first",
            )
    for node, conn in conns.items():
        if node != source:
            await prepare_node(conn, settings, node, tables[node])
    info = await prepare_node(conns[source], settings, source, tables[source], export_snapshot=True)
    exported = info.exported
    assert exported is not None
    try:
        for node in conns:
            if node != source:
                await _copy_to(
                    settings,
                    source,
                    node,
                    exported.snapshot_name,
                    tables,
                    exported.consistent_point,
                )
    finally:
        await exported.close()


async def _copy_to(
    settings: SyncSettings,
    source: str,
    target: str,
    snapshot: str,
    tables: dict[str, NodeTables],
    consistent_point: int,
) -> None:
    origin = settings.origin(source)
    reader = await connect_reader(settings.nodes[source].dsn_value)
    writer: Conn = await psycopg.AsyncConnection.connect(
        settings.nodes[target].dsn_value,
        autocommit=True,
        application_name=f"walrelay-sync-copy-{target}"[:63],
    )
    try:
        await import_snapshot(reader, snapshot)
        await writer.execute(
            "select pg_replication_origin_create(%s) where not exists "
            "(select 1 from pg_replication_origin where roname = %s)",
            (origin, origin),
        )
        await writer.execute("select pg_replication_origin_session_setup(%s)", (origin,))
        async with writer.transaction():
            await writer.execute(
                "select pg_replication_origin_xact_setup(%s::pg_lsn, %s)",
                (format_lsn(consistent_point), datetime.now(UTC)),
            )
            target_tables = tables[target]
            for name, meta in tables[source].items():
                cols = [c for c in meta.columns if c in target_tables[name].columns]
                col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
                await writer.execute(sql.SQL("truncate {}").format(meta.ident))
                rows = 0
                async with (
                    reader.cursor().copy(
                        sql.SQL("copy (select {} from {}) to stdout").format(col_list, meta.ident)
                    ) as out,
                    writer.cursor().copy(
                        sql.SQL("copy {} ({}) from stdin").format(meta.ident, col_list)
                    ) as into,
                ):
                    async for data in out:
                        await into.write(data)
                cur = await writer.execute(sql.SQL("select count(*) from {}").format(meta.ident))
                row = await cur.fetchone()
                rows = int(row[0]) if row else 0
                log.info("sync: copied %s from %s to %s: %d rows", name, source, target, rows)
        await writer.execute("select pg_replication_origin_session_reset()")
    finally:
        await reader.close()
        await writer.close()
