"""``SQL_ASCII`` databases: text whose bytes need not be valid UTF-8.

PostgreSQL does not know what a ``SQL_ASCII`` database's bytes mean, so it
stores any. Asked for them with ``client_encoding=UTF8`` (walrelay's session
setting, :data:`walrelay.source.types.SESSION_SETTINGS`) it checks them and
refuses a value that is not valid UTF-8 (``invalid byte sequence for
encoding "UTF8"``): the replication stream could never pass such a change,
and a snapshot could never read such a row. So in a ``SQL_ASCII`` database
walrelay reads the bytes as stored -- the replication session sets
``client_encoding=SQL_ASCII``, snapshot and backfill reads select
``convert_to(column::text, 'SQL_ASCII')`` (a bytea, unchecked) -- and the
converters decode them; a value that is not UTF-8 becomes its bytes in hex
(:class:`walrelay.source.types.NotUtf8`). Any other server encoding is
converted to UTF-8 by the server, as usual.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["is_sql_ascii", "raw_bytes_if_sql_ascii"]


def is_sql_ascii(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True when ``conn``'s database has encoding ``SQL_ASCII``."""
    return conn.pgconn.parameter_status(b"server_encoding") == b"SQL_ASCII"


async def raw_bytes_if_sql_ascii(conn: psycopg.AsyncConnection[Any]) -> None:
    """Let a replication session send a ``SQL_ASCII`` database's text as stored."""
    if is_sql_ascii(conn):
        await conn.execute("SET client_encoding = 'SQL_ASCII'")
