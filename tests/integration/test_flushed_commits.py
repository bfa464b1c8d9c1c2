"""Every connection whose COMMIT lets walrelay confirm a source position flushes
that commit first: ``synchronous_commit = off`` on the database (as on the
suite's clusters) is turned on for walrelay's session, other levels are kept."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.sync_support import SyncEnv, sync_clusters, sync_env
from walrelay.config import PostgresSinkConfig
from walrelay.sinks.base import SinkContext
from walrelay.sinks.postgres import PostgresSink
from walrelay.state.durability import require_flushed_commits
from walrelay.sync.applier import Direction
from walrelay.sync.conflicts import load_resolver

__all__ = ["sync_clusters", "sync_env"]


async def level(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str:
    cur = await conn.execute("show synchronous_commit")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize(
    ("database_level", "session_level"),
    [("off", "on"), ("local", "local"), ("remote_apply", "remote_apply"), ("on", "on")],
)
async def test_only_off_is_raised(db: str, database_level: str, session_level: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await conn.execute(f"set synchronous_commit = {database_level}")
        await require_flushed_commits(conn)
        assert await level(conn) == session_level


async def test_the_postgres_sink_commits_flushed(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        assert await level(conn) == "off"  # the suite's clusters run with it off
    sink = PostgresSink(PostgresSinkConfig(dsn=db), SinkContext(destination="d"))
    conn = await sink._connect()
    try:
        assert await level(conn) == "on"
    finally:
        await conn.close()


async def test_a_sync_direction_commits_flushed(sync_env: SyncEnv) -> None:
    settings = sync_env.settings()
    assert sync_env.execute("b", "show synchronous_commit") == [("off",)]
    resolvers = {t: load_resolver(settings.conflicts.policy_of(t)) for t in settings.tables}
    conn = await Direction(settings, "a", "b", resolvers)._connect()
    try:
        assert await level(conn) == "on"
    finally:
        await conn.close()
