"""A SQL_ASCII database (PostgreSQL does not know its text's encoding) is streamed:
walrelay speaks UTF-8 on every connection, so settings and text read as text."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest

from tests.integration.support import execute, make_config, read_jsonl, running_engine, wait_for
from walrelay.testing.pgcluster import PgCluster


@pytest.fixture
def sql_ascii_db(pg: PgCluster) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("drop database if exists sql_ascii_t with (force)")
        conn.execute(
            "create database sql_ascii_t encoding 'SQL_ASCII' template template0 locale 'C'"
        )
    return pg.dsn("sql_ascii_t")


async def test_a_sql_ascii_database_streams_its_utf8_text(
    sql_ascii_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = sql_ascii_db
    # UTF-8 bytes stored as they are (SQL_ASCII does no checking).
    execute(
        dsn,
        "create table t (id int primary key, v text)",
        "insert into t values (1, convert_from('\\xc3a974c3a9'::bytea, 'SQL_ASCII'))",
    )
    out = tmp_path / "events.jsonl"
    config = make_config(
        dsn, ["public.t"], [{"name": "f", "sink": {"type": "file", "path": str(out)}}]
    )
    config = config.model_copy(update={"http": config.http.model_copy(update={"enabled": False})})
    try:
        with caplog.at_level(logging.WARNING, logger="walrelay.source.slot"):
            async with running_engine(config) as engine:
                execute(
                    dsn, "insert into t values (2, convert_from('\\xe2988320'::bytea, 'SQL_ASCII'))"
                )
                await wait_for(lambda: len(read_jsonl(out)) == 2, within=30, what="2 events")
                assert engine.source_info is not None
        values = {e["key"]["id"]: e["record"]["v"] for e in read_jsonl(out)}
        assert values == {1: "\u00e9t\u00e9", 2: "\u2603 "}
        assert "has encoding SQL_ASCII" in caplog.text
    finally:
        with psycopg.connect(dsn.replace("sql_ascii_t", "postgres"), autocommit=True) as conn:
            for (slot,) in conn.execute(
                "select slot_name from pg_replication_slots where database = 'sql_ascii_t'"
            ).fetchall():
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            conn.execute("drop database sql_ascii_t with (force)")
