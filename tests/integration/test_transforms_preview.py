"""``walrelay preview``: sample rows before and after the transforms, read-only."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
from click.testing import CliRunner

from tests.integration.support import execute, write_config_file
from walrelay.cli import main


def test_preview_shows_before_and_after_and_writes_nothing(db: str, tmp_path: Path) -> None:
    execute(
        db,
        "create table customers (id int primary key, email text, ssn text, amount numeric)",
        "insert into customers select g, 'c' || g || '@x.org', 'ssn-' || g, g * 1.5"
        " from generate_series(1, 10) g",
    )
    conf = {
        "source": {"dsn": db, "tables": ["customers"]},
        "destinations": [
            {
                "name": "crm",
                "sink": {"type": "stdout"},
                "transforms": [
                    {"filter": "record.id % 2 == 0"},
                    {"exclude": ["ssn"]},
                    {"cast": {"columns": {"amount": "number"}}},
                    {"route": "crm.{table}"},
                ],
            },
            {"name": "raw", "sink": {"type": "stdout"}},
        ],
    }
    path = write_config_file(tmp_path / "walrelay.yaml", conf)
    args = ["preview", "--config", str(path), "--destination", "crm", "--limit", "4", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert line["destination"] == "crm" and line["table"] == "public.customers"
        before = line["before"]["record"]
        assert before["ssn"] == f"ssn-{before['id']}"
        if before["id"] % 2:
            assert line["after"] == [] and line["note"] == "dropped"
        else:
            (after,) = line["after"]
            assert "ssn" not in after["record"]
            assert after["record"]["amount"] == before["id"] * 1.5
            assert (
                line["note"]
                == 'topic crm.public.customers, message key {"id":' + str(before["id"]) + "}"
            )
    text = CliRunner().invoke(main, ["preview", "--config", str(path), "--limit", "1"])
    assert text.exit_code == 0 and "-- before" in text.output and "no transforms" in text.output
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("select count(*) from pg_replication_slots").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)


def test_preview_reports_a_step_naming_a_missing_column(db: str, tmp_path: Path) -> None:
    execute(db, "create table customers (id int primary key, email text)")
    conf = {
        "source": {"dsn": db, "tables": ["customers"]},
        "destinations": [
            {
                "name": "crm",
                "sink": {"type": "stdout"},
                "transforms": [{"mask": {"tables": ["customers"], "columns": ["phone"]}}],
            }
        ],
    }
    path = write_config_file(tmp_path / "walrelay.yaml", conf)
    result = CliRunner().invoke(main, ["preview", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "step 1 (mask): table public.customers has no column phone" in result.output
