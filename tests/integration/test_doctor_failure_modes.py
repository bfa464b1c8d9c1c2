"""``walrelay doctor`` failure modes that need history or statistics, each on a
real cluster set up to exhibit it (test_doctor.py has the misconfigured, the
healthy and the lost-slot clusters):

- a slot left inactive across doctor runs on PostgreSQL 15 (timed from
  walrelay's own samples in its state schema): first seen -> warn -> page;
- a quiet publication in a busy database (the slot's WAL grows while the
  published tables see no write) and heartbeats off in the config;
- row-by-row DELETE cleanup, judged by statistics (the table is not named
  like an outbox);
- FOR TABLES IN SCHEMA; several slots decoding one database; reorder buffer
  spilling; a long transaction.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from tests.waiting import wait_for_sync
from walrelay.monitor.doctor import doctor_command
from walrelay.testing.pgcluster import PgCluster, pg_bindir, start_cluster


def doctor(*args: str) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """``walrelay doctor --json``: (exit code, findings by code)."""
    result = CliRunner().invoke(doctor_command, ["--json", *args], env={"WALRELAY_DSN": None})
    assert result.exit_code != 2, result.output
    codes: dict[str, list[dict[str, Any]]] = {}
    for f in json.loads(result.stdout)["findings"]:
        codes.setdefault(f["code"], []).append(f)
    return result.exit_code, codes


def sql(dsn: str, *statements: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        last = None
        for stmt in statements:
            cur = conn.execute(stmt)
            last = cur.fetchone() if cur.description else None
    return None if last is None else last[0]


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    c = start_cluster({"logical_decoding_work_mem": "64kB", "max_slot_wal_keep_size": "1GB"})
    try:
        yield c
    finally:
        c.stop()


def test_inactive_slot_is_timed_across_runs_and_pages_after_five_minutes(
    cluster: PgCluster,
) -> None:
    dsn = cluster.dsn()
    assert int(sql(dsn, "show server_version_num")) < 170000  # no inactive_since here
    sql(
        dsn,
        "create publication nothing_yet",  # no tables: the consumer below gets no changes
        "select pg_create_logical_replication_slot('idle', 'pgoutput')",
    )

    code, codes = doctor("--dsn", dsn)
    [first] = codes["slot_inactive"]
    assert first["severity"] == "warn" and code == 1
    assert "first to see it inactive" in first["message"]
    assert first["details"]["inactive_seconds"] == 0
    since = sql(dsn, "select inactive_since from walrelay.slot_samples where slot_name = 'idle'")
    assert since is not None

    # The second run measures from the first run's sample: it keeps the time
    # the slot was first seen inactive (here moved back, as if the first run
    # had been 6 minutes ago).
    sql(
        dsn,
        "update walrelay.slot_samples set inactive_since = inactive_since - interval '6 min'",
    )
    code, codes = doctor("--dsn", dsn)
    [second] = codes["slot_inactive"]
    assert second["severity"] == "page" and code == 3
    assert second["details"]["inactive_seconds"] >= 360
    assert re.search(r"inactive for 6\.\dmin", second["message"]), second["message"]
    assert "pg_drop_replication_slot('idle')" in second["fix"]
    assert sql(
        dsn, "select inactive_since from walrelay.slot_samples where slot_name = 'idle'"
    ) == since - datetime.timedelta(minutes=6)

    # A consumer takes it: no finding, and the samples forget the inactive time.
    consumer = subprocess.Popen(
        [
            str(pg_bindir() / "pg_recvlogical"),
            "-d",
            dsn,
            "--slot",
            "idle",
            "--start",
            "--no-loop",
            "-f",
            os.devnull,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=nothing_yet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_sync(
            lambda: sql(dsn, "select active from pg_replication_slots") is True,
            what="pg_recvlogical to hold the slot",
        )
        code, codes = doctor("--dsn", dsn)
        assert "slot_inactive" not in codes
        assert sql(dsn, "select inactive_since from walrelay.slot_samples") is None
    finally:
        consumer.terminate()
        consumer.wait(timeout=30)
    wait_for_sync(
        lambda: sql(dsn, "select active from pg_replication_slots") is False,
        what="the slot to be released",
    )
    code, codes = doctor("--dsn", dsn)
    assert codes["slot_inactive"][0]["details"]["inactive_seconds"] == 0  # timed afresh

    # --no-record writes nothing, and cannot time it
    sql(dsn, "delete from walrelay.slot_samples")
    code, codes = doctor("--dsn", dsn, "--no-record")
    assert "--no-record" in codes["slot_inactive"][0]["message"]
    assert sql(dsn, "select count(*) from walrelay.slot_samples") == 0


def test_quiet_publication_in_a_busy_database_and_heartbeats_off(
    cluster: PgCluster, tmp_path: Path
) -> None:
    dsn = cluster.dsn()
    sql(
        dsn,
        "create table orders (id int primary key)",
        "create table busy (v int)",
        "create publication orders_pub for table orders",
        "select pg_create_logical_replication_slot('quiet', 'pgoutput')",
    )
    code, codes = doctor("--dsn", dsn)
    assert "quiet_publication" not in codes  # nothing to compare with yet

    # The database writes 48 MB of WAL; the published table nothing.
    for i in range(3):
        sql(dsn, f"insert into busy values ({i})", "select pg_switch_wal()")
    code, codes = doctor("--dsn", dsn)
    [quiet] = codes["quiet_publication"]
    assert quiet["severity"] == "warn" and quiet["object"] == "slot quiet"
    assert code == 1  # warnings only
    assert quiet["details"]["wal_written"] >= 32 * 1024 * 1024
    assert "heartbeat" in quiet["fix"]

    # A write to the published table between runs: not quiet.
    sql(dsn, "insert into orders values (1)")
    _wait_stats(dsn, "orders", "n_tup_ins", 1)
    for i in range(3):
        sql(dsn, f"insert into busy values ({i})", "select pg_switch_wal()")
    _, codes = doctor("--dsn", dsn)
    assert "quiet_publication" not in codes

    # Heartbeats off in walrelay's config: said by itself.
    config = tmp_path / "walrelay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"dsn": dsn, "tables": ["public.orders"], "slot": "quiet"},
                "destinations": [{"name": "f", "sink": {"type": "file", "path": "/dev/null"}}],
                "heartbeat": {"enabled": False},
            }
        )
    )
    _code, codes = doctor("--config", str(config))
    assert [f["severity"] for f in codes["heartbeat_off"]] == ["warn"]
    assert "heartbeat: {enabled: true" in codes["heartbeat_off"][0]["fix"]


def test_cleanup_by_delete_wide_schema_publication_slots_spills_and_long_transactions(
    cluster: PgCluster,
) -> None:
    dsn = cluster.dsn()
    sql(
        dsn,
        "create schema app",
        "create table app.jobs (id bigserial primary key, body text)",  # not named outbox
        "create table app.accounts (id bigserial primary key, balance int)",
        "create publication app_pub for tables in schema app",
        "select pg_create_logical_replication_slot('first', 'pgoutput')",
        "select pg_create_logical_replication_slot('second', 'pgoutput')",
    )
    # jobs: inserted, then deleted row by row; accounts: inserted and updated
    sql(
        dsn,
        "insert into app.jobs (body) select 'x' from generate_series(1, 3000)",
        "do $$ declare r record; begin for r in select id from app.jobs loop "
        "delete from app.jobs where id = r.id; end loop; end $$",
        "insert into app.accounts (balance) select 0 from generate_series(1, 3000)",
        "update app.accounts set balance = 1",
    )
    _wait_stats(dsn, "jobs", "n_tup_del", 3000)
    _wait_stats(dsn, "accounts", "n_tup_upd", 3000)
    # A transaction larger than logical_decoding_work_mem (64kB), decoded: spills.
    sql(
        dsn,
        "select count(*) from pg_logical_slot_peek_binary_changes('first', null, null, "
        "'proto_version', '1', 'publication_names', 'app_pub')",
    )
    wait_for_sync(
        lambda: (
            (
                sql(
                    dsn,
                    "select spill_txns from pg_stat_replication_slots where slot_name = 'first'",
                )
                or 0
            )
            > 0
        ),
        what="the decoding to spill",
    )
    with psycopg.connect(dsn) as held:
        held.execute("select 1")  # a transaction left open
        code, codes = doctor("--dsn", dsn, "--long-transaction-seconds", "0")
        held.rollback()

    [cleanup] = codes["delete_cleanup"]
    assert cleanup["object"] == "table app.jobs" and cleanup["severity"] == "warn"
    assert cleanup["details"]["deletes"] == 3000
    assert "partition" in cleanup["fix"]
    assert [f["object"] for f in codes["publication_tables_in_schema"]] == ["publication app_pub"]
    assert codes["publication_tables_in_schema"][0]["fix"]
    [several] = codes["multiple_logical_slots"]
    assert several["details"]["slots"] == ["first", "second"]
    [spill] = codes["logical_decoding_spills"]
    assert spill["object"] == "slot first" and spill["details"]["spill_bytes"] > 0
    assert "logical_decoding_work_mem" in spill["fix"]
    assert "idle_in_transaction" in codes
    assert code == 1  # the worst is a warning


def _wait_stats(dsn: str, table: str, column: str, at_least: int) -> None:
    wait_for_sync(
        lambda: (
            (sql(dsn, f"select {column} from pg_stat_user_tables where relname = '{table}'") or 0)
            >= at_least
        ),
        what=f"{table}.{column} to reach {at_least} in pg_stat_user_tables",
    )
