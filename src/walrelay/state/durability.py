"""Commits that are on disk when they return, on a connection that writes what a
slot is then confirmed past."""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["require_flushed_commits"]


async def require_flushed_commits(conn: psycopg.AsyncConnection[Any]) -> None:
    """Turn ``synchronous_commit = off`` into ``on`` for this session.

    walrelay confirms a source position once the COMMIT that applied it
    returns. With ``off``, that COMMIT returns before its WAL is flushed, and a
    crash of the target would lose a transaction the source no longer keeps.
    ``local``, ``remote_write``, ``on`` and ``remote_apply`` all flush locally
    first and are left as the database sets them."""
    await conn.execute(
        "select set_config('synchronous_commit', 'on', false) "
        "where current_setting('synchronous_commit') = 'off'"
    )
