"""A database error while a CLI command works is one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tests.integration.support import execute, write_config_file
from walrelay.cli import main
from walrelay.testing.pgcluster import free_port


def test_parking_list_on_a_broken_state_table_is_one_line(db: str, tmp_path: Path) -> None:
    # Not walrelay's table: the select of its columns fails in PostgreSQL.
    execute(db, "create schema walrelay", "create table walrelay.parked_events (x int)")
    conf = {
        "source": {"dsn": db, "tables": ["public.t"]},
        "destinations": [{"name": "d", "sink": {"type": "stdout"}}],
    }
    path = write_config_file(tmp_path / "walrelay.yaml", conf)
    for command in ("parking", "failed"):
        result = CliRunner().invoke(main, [command, "list", "--config", str(path)])
        lines = [line for line in result.stderr.splitlines() if "deprecated" not in line]
        assert result.exit_code == 1, result.exception
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("walrelay: error: the state database answered UndefinedColumn")


def test_run_with_the_state_database_unreachable_is_one_line(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key)")
    state_dsn = f"host=127.0.0.1 port={free_port()} user=u password=St4te-PW connect_timeout=2"
    conf = {
        "source": {"dsn": db, "tables": ["public.t"]},
        "destinations": [{"name": "f", "sink": {"type": "file", "path": str(tmp_path / "o")}}],
        "state": {"dsn": state_dsn},
        "http": {"enabled": False},
    }
    path = write_config_file(tmp_path / "walrelay.yaml", conf)
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2, result.exception
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert "Connection refused" in line and "fix:" in line
    assert "St4te-PW" not in result.output
