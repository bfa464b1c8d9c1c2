"""The OIDs of a slot's tables, in the ``<state schema>.meta`` table (migration 1).

walrelay follows tables by OID (walrelay.pipeline.router): a table renamed
while walrelay runs keeps its destinations. Recorded at every start, the OIDs
let the next start find a table the config still names by its old name.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import sql

from walrelay.state.migrations import migrate

__all__ = ["read_table_oids", "record_table_oids"]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def _key(slot: str) -> str:
    return f"table_oids:{slot}"


async def read_table_oids(dsn: str, schema: str, slot: str) -> dict[str, int]:
    """Configured table name -> OID, as recorded at the slot's last start ({} if none)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        table = sql.Identifier(schema, "meta")
        cur = await conn.execute("select to_regclass(%s)", (table.as_string(conn),))
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return {}
        cur = await conn.execute(
            sql.SQL("select value from {} where key = %s").format(table), (_key(slot),)
        )
        row = await cur.fetchone()
    if row is None:
        return {}
    value = orjson.loads(row[0])
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


async def record_table_oids(dsn: str, schema: str, slot: str, oids: dict[str, int]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, schema)
        await conn.execute(
            sql.SQL(
                "insert into {} (key, value) values (%s, %s) "
                "on conflict (key) do update set value = excluded.value"
            ).format(sql.Identifier(schema, "meta")),
            (_key(slot), orjson.dumps(oids).decode()),
        )
