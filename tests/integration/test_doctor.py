"""``walrelay doctor`` against real clusters: a misconfigured one, a healthy one, a lost slot.

Each scenario gets its own cluster (the doctor reviews cluster-wide state such
as slots and settings, so the shared ``pg`` cluster would leak other tests'
slots into the findings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.waiting import wait_for_sync
from walrelay.monitor.doctor import DoctorError, connect, doctor_command, run_doctor
from walrelay.testing.pgcluster import PgCluster, free_port, pg_bindir, start_cluster


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """``walrelay doctor`` as a real child process."""
    return subprocess.run(
        [sys.executable, "-m", "walrelay", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "WALRELAY_DSN"},
    )


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def findings_by_code(payload: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in payload["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


@pytest.fixture
def cluster_factory() -> Iterator[Callable[[dict[str, str] | None], PgCluster]]:
    started: list[PgCluster] = []

    def start(settings: dict[str, str] | None = None) -> PgCluster:
        cluster = start_cluster(settings)
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop()


def test_misconfigured_cluster_reports_each_problem_with_its_fix(
    cluster_factory: Callable[[dict[str, str] | None], PgCluster],
) -> None:
    cluster = cluster_factory({"max_slot_wal_keep_size": "-1"})  # unlimited: no cap
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table outbox_events (id bigserial primary key, payload jsonb)")
        conn.execute("alter table outbox_events replica identity full")
        conn.execute("create table audit_log (at timestamptz, what text)")  # no key at all
        conn.execute("create table orders (id int primary key)")
        conn.execute("create publication everything for all tables")
        conn.execute("select pg_create_logical_replication_slot('walrelay', 'pgoutput')")
    with psycopg.connect(dsn) as idle:  # held open in a transaction for the whole test
        idle.execute("select 1")
        pid = idle.info.backend_pid
        wait_for_sync(
            lambda: (
                scalar(dsn, "select state from pg_stat_activity where pid = %s", (pid,))
                == "idle in transaction"
            ),
            within=20,
            what="the held session to be idle in transaction",
        )

        # --no-record: this run leaves no sample, so the JSON run below is the
        # first to see the slot inactive (both warn; test_doctor_failure_modes
        # times an inactive slot across runs).
        result = doctor("--dsn", dsn, "--long-transaction-seconds", "0", "--no-record")
        assert result.returncode == 4, result.stdout + result.stderr  # worst: error
        lines = result.stdout.splitlines()

        def line(code: str, severity: str, *needles: str) -> str:
            hits = [ln for ln in lines if re.match(rf"^{severity.upper()}\s+{code}\s", ln)]
            assert hits, f"no {severity} {code} line in:\n{result.stdout}"
            for needle in needles:
                assert any(needle in h for h in hits), f"{needle!r} not in {hits}"
            return hits[0]

        line("publication_all_tables", "warn", "publication everything", "CREATE PUBLICATION")
        line(
            "replica_identity_full",
            "warn",
            "table public.outbox_events",
            "ALTER TABLE public.outbox_events REPLICA IDENTITY DEFAULT",
        )
        line("outbox_not_partitioned", "warn", "table public.outbox_events", "walrelay outbox init")
        line(
            "max_slot_wal_keep_size_unset",
            "page",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '",
            "SELECT pg_reload_conf()",
        )
        line("table_without_key", "error", "table public.audit_log", "ADD PRIMARY KEY")
        line(
            "idle_in_transaction",
            "warn",
            f"pid {pid}",
            f"pg_terminate_backend({pid})",
            "idle_in_transaction_session_timeout",
        )
        line("slot_inactive", "warn", "slot walrelay", "pg_drop_replication_slot('walrelay')")
        # worst first, then a summary with the exit code
        severities = [ln.split()[0] for ln in lines[1:-1]]
        order = ["ERROR", "PAGE", "WARN", "INFO", "OK"]
        assert severities == sorted(severities, key=order.index)
        assert lines[-1].startswith("summary: ") and lines[-1].endswith("-> exit 4")

        # --json: the same review, machine-readable
        runner = CliRunner()
        res = runner.invoke(
            doctor_command, ["--dsn", dsn, "--json", "--long-transaction-seconds", "0"]
        )
        assert res.exit_code == 4, res.output
        payload = json.loads(res.output)
        codes = findings_by_code(payload)
        for code, severity in {
            "publication_all_tables": "warn",
            "replica_identity_full": "warn",
            "outbox_not_partitioned": "warn",
            "max_slot_wal_keep_size_unset": "page",
            "table_without_key": "error",
            "idle_in_transaction": "warn",
            "slot_inactive": "warn",
        }.items():
            assert [f["severity"] for f in codes[code]] == [severity], code
            assert all(f["fix"] for f in codes[code]), code
        assert codes["idle_in_transaction"][0]["details"]["pid"] == pid
        assert payload["summary"]["exit_code"] == 4
        assert payload["summary"]["page"] >= 1 and payload["summary"]["error"] >= 1
        assert set(payload["findings"][0]) == {
            "code",
            "severity",
            "object",
            "message",
            "fix",
            "details",
        }
        idle.rollback()

    # the held transaction is gone: no idle-in-transaction finding any more
    report = run_doctor(dsn, long_transaction_seconds=0)
    assert "idle_in_transaction" not in {f.code for f in report.findings}


def test_well_configured_cluster_exits_zero_with_only_ok_and_info(
    cluster_factory: Callable[[dict[str, str] | None], PgCluster],
) -> None:
    cluster = cluster_factory({"max_slot_wal_keep_size": "128MB"})
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table orders (id bigint primary key, total numeric)")
        conn.execute(
            "create table outbox (id bigint, created_at timestamptz, payload jsonb, "
            "primary key (id, created_at)) partition by range (created_at)"
        )
        conn.execute(
            "create table outbox_default partition of outbox for values from (minvalue) "
            "to (maxvalue)"
        )
        conn.execute("create publication walrelay_pub for table orders, outbox")
        conn.execute("select pg_create_logical_replication_slot('walrelay', 'pgoutput')")
    consumer = subprocess.Popen(
        [
            str(pg_bindir() / "pg_recvlogical"),
            "-d",
            dsn,
            "--slot",
            "walrelay",
            "--start",
            "--no-loop",
            "-f",
            os.devnull,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=walrelay_pub",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_sync(
            lambda: scalar(dsn, "select active from pg_replication_slots") is True,
            within=20,
            what="pg_recvlogical to hold the slot",
        )
        runner = CliRunner()
        res = runner.invoke(doctor_command, ["--dsn", dsn, "--json", "--slot", "walrelay"])
        payload = json.loads(res.output)
        codes = findings_by_code(payload)

        # the host's own disk is what it is: the doctor must agree with it, not be told
        usage = shutil.disk_usage(cluster.datadir / "pg_wal")
        used_percent = 100 * usage.used / (usage.used + usage.free)
        disk = codes["wal_disk_usage"][0]
        assert abs(disk["details"]["used_percent"] - used_percent) < 1
        expected_disk = "ok" if used_percent < 60 else ("warn" if used_percent < 80 else "page")
        assert disk["severity"] == expected_disk
        others = [f for f in payload["findings"] if f["code"] != "wal_disk_usage"]
        assert {f["severity"] for f in others} <= {"ok", "info"}, json.dumps(others, indent=1)
        if expected_disk == "ok":
            assert res.exit_code == 0, res.output
        for code in (
            "wal_level_logical",
            "max_slot_wal_keep_size_set",
            "publication_narrow",
            "published_tables_keyed",
            "slot_ready",
            "slots_healthy",
            "replication_slots_headroom",
            "wal_senders_headroom",
            "logical_decoding_work_mem",
            "no_long_transactions",
        ):
            assert code in codes, code
        assert "outbox_not_partitioned" not in codes
        assert codes["wal_senders_headroom"][0]["details"]["used"] == 1

        text = doctor("--dsn", dsn, "--slot", "walrelay")
        expected_code = {"ok": 0, "warn": 1, "page": 3}[expected_disk]
        assert text.returncode == expected_code, text.stdout + text.stderr
        assert all(
            ln.split()[0] in {"OK", "INFO"}
            for ln in text.stdout.splitlines()[1:-1]
            if ln.split()[1] != "wal_disk_usage"
        ), text.stdout
    finally:
        consumer.terminate()
        consumer.communicate(timeout=30)  # reaps it and closes the stderr pipe


def test_lost_slot_pages(cluster_factory: Callable[[dict[str, str] | None], PgCluster]) -> None:
    cluster = cluster_factory({"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB"})
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot('stuck', 'pgoutput')")
        conn.execute("create table t (id int primary key)")
        for i in range(3):  # push the slot's restart_lsn out of the kept WAL
            conn.execute("insert into t values (%s)", (i,))
            conn.execute("select pg_switch_wal()")
        conn.execute("checkpoint")
    assert scalar(dsn, "select wal_status from pg_replication_slots") == "lost"

    result = doctor("--dsn", dsn, "--json")
    assert result.returncode == 3, result.stdout + result.stderr  # worst: page
    codes = findings_by_code(json.loads(result.stdout))
    assert [f["severity"] for f in codes["slot_lost"]] == ["page"]
    assert "pg_drop_replication_slot('stuck')" in codes["slot_lost"][0]["fix"]
    assert "slot_inactive" not in codes  # lost says it all


def test_connection_error_exits_2_without_the_password() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres password=hunter2secret dbname=x"
    result = doctor("--dsn", dsn)
    assert result.returncode == 2
    assert "cannot connect to" in result.stderr
    assert "password=***" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout

    url = f"postgresql://postgres:hunter2secret@127.0.0.1:{free_port()}/x"
    result = doctor("--dsn", url, "--json")
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr + result.stdout


def test_session_is_read_only(db: str) -> None:
    with connect(db) as conn:
        assert conn.execute("show transaction_read_only").fetchone() == {
            "transaction_read_only": "on"
        }
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("create table nope (id int)")
    with pytest.raises(DoctorError, match="cannot connect"):
        connect(f"host=127.0.0.1 port={free_port()} dbname=x connect_timeout=2")
