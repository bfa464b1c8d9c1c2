"""The slot as the database sees it, for Prometheus when walrelay is dead.

``deploy/prometheus/postgres_exporter-queries.yml`` runs against a real
PostgreSQL (its columns are exactly the metrics it declares, labels as text,
values as numbers), then in a real community postgres_exporter (Debian's
``prometheus-postgres-exporter``) whose scrape must carry every series the
rules in ``walrelay-postgres-rules.yml`` read; ``promtool`` checks those rules
and runs their unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from tests.integration.support import execute, running_engine, wait_for, wait_for_sync
from tests.integration.test_alerting_prometheus import (
    AlertReceiver,
    _process,
    alerting_stack,
    short_rules,
)
from walrelay.config import parse_config
from walrelay.testing.pgcluster import free_port

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
QUERIES = RULES_DIR / "postgres_exporter-queries.yml"
RULES = RULES_DIR / "walrelay-postgres-rules.yml"

# What the exporter turns into a label (text) and into a value (a number it can parse).
TEXT = {"text", "name", "varchar"}
NUMBER = {"float8", "float4", "int8", "int4", "int2", "numeric", "bool"}


def _queries() -> dict[str, Any]:
    loaded = yaml.safe_load(QUERIES.read_text())
    assert isinstance(loaded, dict) and loaded
    return loaded


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: bash scripts/servers/install.sh prometheus"
    return subprocess.run(
        [promtool, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )


def test_postgres_rules_are_valid_and_their_unit_tests_pass() -> None:
    for args in (
        ("check", "rules", RULES.name),
        ("test", "rules", "walrelay-postgres-rules.test.yml"),
    ):
        result = _promtool(*args)
        assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, (
            result.stdout + result.stderr
        )


def _stuck_slots(db: str) -> None:
    execute(
        db,
        "create table filler (v text)",
        "select pg_create_logical_replication_slot('exp_stuck', 'pgoutput')",
        "select pg_create_physical_replication_slot('exp_physical', true)",
        "insert into filler select repeat('x', 1000) from generate_series(1, 3000)",
    )
    wait_wal_written(db)


def wait_wal_written(db: str) -> None:
    """Until the WAL inserted so far is written: the test clusters run with
    synchronous_commit off, and retained WAL is measured from the write position."""
    with psycopg.connect(db, autocommit=True) as conn:
        inserted = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
        assert inserted is not None

        def written() -> bool:
            row = conn.execute("select pg_current_wal_lsn() >= %s::pg_lsn", inserted).fetchone()
            return bool(row and row[0])

        wait_for_sync(written, what="the inserted WAL to be written")


def test_each_query_returns_the_declared_columns_with_the_types_the_exporter_reads(
    db: str,
) -> None:
    _stuck_slots(db)
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            for name, spec in _queries().items():
                assert spec.get("master") is True, f"{name}: cluster-wide, must run once"
                declared = {k: v["usage"] for m in spec["metrics"] for k, v in m.items()}
                cur = conn.execute(spec["query"])
                assert cur.description is not None
                types = {
                    c.name: conn.execute(
                        "select typname::text from pg_type where oid = %s", (c.type_code,)
                    ).fetchone()[0]  # type: ignore[index]
                    for c in cur.description
                }
                assert set(types) == set(declared), name
                for column, usage in declared.items():
                    expected = TEXT if usage == "LABEL" else NUMBER
                    assert types[column] in expected, (name, column, types[column])
                rows = {r[0]: dict(zip(types, r, strict=True)) for r in cur.fetchall()}
                stuck, physical = rows["exp_stuck"], rows["exp_physical"]
                # Labels are never NULL (the exporter would print an empty label).
                assert stuck["database"] == db.rsplit("dbname=", 1)[1].split()[0]
                assert (stuck["slot_type"], physical["slot_type"]) == ("logical", "physical")
                assert physical["database"] == ""
                assert stuck["active"] is False and stuck["wal_status_code"] == 0
                assert stuck["retained_bytes"] >= 3_000_000
                assert stuck["confirmed_flush_lag_bytes"] >= 3_000_000
                assert physical["confirmed_flush_lag_bytes"] is None  # NaN in Prometheus
                # The test cluster caps slots at 4 GB: safe_wal_size is what is left
                # (PostgreSQL counts in whole 16 MB segments).
                left = 4 * 1024**3 - stuck["retained_bytes"]
                assert abs(stuck["safe_wal_size_bytes"] - left) < 32 * 1024**2
    finally:
        execute(db, "select pg_drop_replication_slot('exp_physical')")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@contextlib.contextmanager
def postgres_exporter(
    db: str, log: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The community postgres_exporter on a free port, loaded with the queries."""
    exporter = shutil.which("prometheus-postgres-exporter")
    assert exporter, "postgres_exporter missing: bash scripts/servers/install.sh prometheus"
    params = conninfo_to_dict(db)
    monkeypatch.setenv(
        "DATA_SOURCE_NAME",
        f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
        "?sslmode=disable",
    )
    port = free_port()
    args = [
        exporter,
        f"--extend.query-path={QUERIES}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--disable-default-metrics",
        "--disable-settings-metrics",
        "--no-collector.database",
        "--no-collector.bgwriter",
    ]
    with _process(args, log) as proc:
        yield port, proc


def test_the_exporter_serves_every_series_the_rules_read(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stuck_slots(db)
    log = tmp_path / "exporter.log"
    try:
        with postgres_exporter(db, log, monkeypatch) as (port, proc):
            text = ""

            def scraped() -> bool:
                nonlocal text
                assert proc.poll() is None, log.read_text()
                try:
                    text = _scrape(f"http://127.0.0.1:{port}/metrics")
                except OSError:
                    return False
                return 'slot_name="exp_stuck"' in text

            wait_for_sync(scraped, within=60, what="the exporter's slot metrics")
        samples = {
            (s.name, s.labels.get("slot_name")): s
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        read_by_rules = set(re.findall(r"\bpg_walrelay_[a-z_]+", RULES.read_text()))
        assert read_by_rules, "the rules read no pg_walrelay_* series"
        for metric in read_by_rules:
            assert (metric, "exp_stuck") in samples, f"{metric} not exported: {log.read_text()}"
        stuck = {name: s for (name, slot), s in samples.items() if slot == "exp_stuck"}
        assert stuck["pg_walrelay_slot_active"].value == 0
        assert stuck["pg_walrelay_slot_retained_bytes"].value >= 3_000_000
        assert stuck["pg_walrelay_slot_wal_status_code"].value == 0
        assert stuck["pg_walrelay_slot_active"].labels["slot_type"] == "logical"
        lag = samples[("pg_walrelay_slot_confirmed_flush_lag_bytes", "exp_physical")]
        assert math.isnan(lag.value)
        assert "error" not in log.read_text().lower(), log.read_text()
    finally:
        execute(db, "select pg_drop_replication_slot('exp_physical')")


def short_postgres_rules() -> str:
    text = short_rules(RULES.read_text())
    text = re.sub(r"for: 2m\b", "for: 2s", text)
    return re.sub(r"for: 10m\b", "for: 10s", text)


async def test_walrelay_stopped_its_growing_slot_pages_through_prometheus_and_resolves(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """walrelay stops; only postgres_exporter sees its slot; writes go on:
    WalrelayGoneSlotGrowing reaches Alertmanager's receiver, and resolves
    once walrelay runs again."""
    execute(db, "create table items (id serial primary key, v text)")
    http_port, am_port = free_port(), free_port()
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "slot": "e2e_gone",
                "publication": "e2e_gone_pub",
                "tables": ["public.items"],
                "status_interval": 1,
            },
            "destinations": [
                {"name": "file", "sink": {"type": "file", "path": str(tmp_path / "out.jsonl")}}
            ],
            "shutdown_timeout": 5,
            "http": {"port": http_port, "token_env": "WALRELAY_TEST_EXPORTER_TOKEN"},
            "monitor": {"enabled": False},
        }
    )
    monkeypatch.setenv("WALRELAY_TEST_EXPORTER_TOKEN", "t0ken-for-the-exporter-test")
    async with running_engine(config):
        pass  # creates the slot, then stops: the slot is left without consumer

    async def keep_writing() -> None:
        while True:
            await asyncio.to_thread(execute, db, "insert into items (v) values ('x')")
            await asyncio.sleep(0.2)  # a steady trickle of WAL, not synchronisation

    with postgres_exporter(db, tmp_path / "exporter.log", monkeypatch) as (exporter_port, _):
        async with (
            AlertReceiver() as receiver,
            alerting_stack(
                tmp_path,
                http_port,
                receiver.port,
                am_port,
                extra_rules=short_postgres_rules(),
                extra_jobs={"postgres": exporter_port},
            ),
        ):
            writer = asyncio.create_task(keep_writing())
            try:
                await wait_for(
                    lambda: receiver.seen(
                        "WalrelayGoneSlotGrowing", "firing", severity="page", slot="e2e_gone"
                    ),
                    within=40,
                    what="WalrelayGoneSlotGrowing at the receiver",
                )
                assert receiver.seen("WalrelayPgSlotInactive", "firing", slot="e2e_gone")
                async with running_engine(config):
                    for alert in ("WalrelayGoneSlotGrowing", "WalrelayPgSlotInactive"):
                        await wait_for(
                            lambda a=alert: receiver.seen(  # type: ignore[misc]
                                a, "resolved", slot="e2e_gone"
                            ),
                            within=40,
                            what=f"{alert} to resolve once walrelay runs",
                        )
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
