"""A SQL_ASCII database (PostgreSQL does not know its text's encoding) is streamed:
walrelay speaks UTF-8 on every connection, so settings and text read as text."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest

from tests.integration.support import execute, make_config, read_jsonl, running_engine, wait_for
from walrelay.testing.pgcluster import PgCluster, drop_database


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
        drop_database(dsn.replace("sql_ascii_t", "postgres"), "sql_ascii_t")


def original_bytes(value: str) -> bytes:
    """The bytes a value that is not UTF-8 stands for: ``\\x`` + hex (README, "SQL_ASCII")."""
    assert value.startswith("\\x"), value
    return bytes.fromhex(value[2:])


async def test_bytes_that_are_not_utf8_are_delivered_in_hex_and_never_stop_the_slot(
    sql_ascii_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the server refused to send such a value under client_encoding=UTF8
    and the stream reconnected for ever at the same change."""
    dsn = sql_ascii_db
    bad = "convert_from('\\x41ff42c3'::bytea, 'SQL_ASCII')"  # A, 0xff, B, a cut-off é
    execute(
        dsn,
        "create table t (k text primary key, v varchar, a text[], n int)",
        # Read by the initial snapshot.
        f"insert into t values ({bad} || '1', {bad}, array[{bad}, 'x'], 1)",
    )
    out = tmp_path / "events.jsonl"
    config = make_config(
        dsn, ["public.t"], [{"name": "f", "sink": {"type": "file", "path": str(out)}}]
    )
    config = config.model_copy(update={"http": config.http.model_copy(update={"enabled": False})})
    try:
        async with running_engine(config):
            execute(
                dsn,
                f"insert into t values ({bad} || '2', {bad}, array[{bad}, 'x'], 2)",
                f"update t set n = 3 where k = {bad} || '2'",
                "insert into t values "
                "('plain', convert_from('\\xc3a9'::bytea, 'SQL_ASCII'), array['ok'], 4)",
            )
            await wait_for(lambda: len(read_jsonl(out)) == 4, within=30, what="4 events")
        assert "invalid byte sequence" not in caplog.text
        events = read_jsonl(out)
        assert [(e["op"], e["record"]["n"]) for e in events] == [
            ("read", 1),
            ("insert", 2),
            ("update", 3),
            ("insert", 4),
        ]
        for e in events[:3]:
            rec = e["record"]
            assert e["not_utf8"] == ["k", "v", "a"]
            n = rec["n"] if rec["n"] != 3 else 2
            assert original_bytes(rec["k"]) == b"A\xffB\xc3" + str(n).encode()
            assert original_bytes(e["key"]["k"]) == original_bytes(rec["k"])
            assert original_bytes(rec["v"]) == b"A\xffB\xc3"
            # Not valid UTF-8 as a whole: the array is its PostgreSQL text's bytes.
            assert original_bytes(rec["a"]) == b"{A\xffB\xc3,x}"
        assert events[3]["record"] == {"k": "plain", "v": "é", "a": ["ok"], "n": 4}
        assert "not_utf8" not in events[3]
    finally:
        with psycopg.connect(dsn.replace("sql_ascii_t", "postgres"), autocommit=True) as conn:
            for (slot,) in conn.execute(
                "select slot_name from pg_replication_slots where database = 'sql_ascii_t'"
            ).fetchall():
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
