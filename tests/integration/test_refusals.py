"""walrelay refuses what is unsafe for the primary unless the config accepts it:
a wildcard publication (FOR ALL TABLES, FOR TABLES IN SCHEMA) and an unlimited
max_slot_wal_keep_size. The refusal is one line: the setting, the risk, the fix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from tests.integration.support import execute, make_config, running_engine
from walrelay.errors import SourceSetupError
from walrelay.testing.pgcluster import PgCluster, start_cluster


def _raw(dsn: str, out: Path, **source: Any) -> dict[str, Any]:
    return {
        "source": {"dsn": dsn, "tables": ["public.items"], **source},
        "destinations": [{"name": "out", "sink": {"type": "file", "path": str(out)}}],
        "http": {"enabled": False},
        "monitor": {"enabled": False},
    }


def _run_cli(tmp_path: Path, raw: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "walrelay.yaml"
    path.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "walrelay", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def uncapped() -> Iterator[PgCluster]:
    cluster = start_cluster({"max_slot_wal_keep_size": "-1"})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    ("create", "named"),
    [
        ("create publication wide for all tables", "FOR ALL TABLES"),
        ("create publication wide for tables in schema public", "FOR TABLES IN SCHEMA public"),
    ],
)
async def test_wildcard_publication_is_refused_unless_allowed(
    db: str, tmp_path: Path, create: str, named: str
) -> None:
    execute(db, "create table items (id int primary key, v text)", create)
    result = _run_cli(tmp_path, _raw(db, tmp_path / "out.jsonl", publication="wide"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert f"publication wide is {named}" in line
    assert "CREATE PUBLICATION wide_narrow FOR TABLE public.items" in line
    assert "allow_wide_publication: true" in line
    # nothing was created on the refused path
    with_slot = _count(db, "select count(*) from pg_replication_slots where database = %s")
    assert with_slot == 0

    # accepted when the config says so: the engine streams from it
    config = make_config(
        db,
        ["public.items"],
        [{"name": "out", "sink": {"type": "file", "path": str(tmp_path / "ok.jsonl")}}],
        publication="wide",
        allow_wide_publication=True,
    )
    async with running_engine(config) as engine:
        assert engine.streaming or engine.started.is_set()


async def test_unlimited_wal_is_refused_unless_allowed(uncapped: PgCluster, tmp_path: Path) -> None:
    dsn = uncapped.dsn()
    execute(dsn, "create table items (id int primary key, v text)")
    result = _run_cli(tmp_path, _raw(dsn, tmp_path / "out.jsonl"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "max_slot_wal_keep_size is unlimited (-1)" in lines[0]
    assert "disk is full" in lines[0]
    assert "ALTER SYSTEM SET max_slot_wal_keep_size" in lines[0]
    assert "allow_unbounded_wal: true" in lines[0]

    out = tmp_path / "ok.jsonl"
    dest = [{"name": "out", "sink": {"type": "file", "path": str(out)}}]
    with pytest.raises(SourceSetupError, match="max_slot_wal_keep_size is unlimited"):
        async with running_engine(make_config(dsn, ["public.items"], dest)):
            pass
    async with running_engine(
        make_config(dsn, ["public.items"], dest, allow_unbounded_wal=True)
    ) as engine:
        assert engine.started.is_set()


def _count(dsn: str, query: str) -> int:
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, (dbname,)).fetchone()
    assert row is not None
    return int(row[0])
