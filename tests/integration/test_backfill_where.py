"""``walrelay backfill --where`` is the operator's SQL: checked at submit, read-only when run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from click.testing import CliRunner

from tests.integration.support import (
    execute,
    make_config,
    running_engine,
    wait_for,
    write_config_file,
)
from walrelay.cli import main


def _backfill(config_path: Path, where: str) -> tuple[int, str]:
    args = ["backfill", "--config", str(config_path), "--destination", "file", "--table", "t"]
    result = CliRunner().invoke(main, [*args, "--where", where, "--no-wait"])
    return result.exit_code, result.stderr


def _request(dsn: str) -> tuple[str, str | None]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select status, error from walrelay.backfills order by id desc limit 1"
        ).fetchone()
    return (row[0], row[1]) if row else ("none", None)


async def test_a_where_that_writes_is_refused_by_postgresql(db: str, tmp_path: Path) -> None:
    execute(
        db,
        "create table t (id bigint primary key, v text)",
        "insert into t select g, 'x' from generate_series(1, 50) g",
        "create table side_effects (n int)",
        "create function writes() returns boolean language plpgsql as"
        " $$ begin insert into public.side_effects values (1); return true; end $$",
    )
    dest = {"name": "file", "sink": {"type": "file", "path": str(tmp_path / "out.jsonl")}}
    dest["snapshot"] = "never"
    raw = {
        "source": {"dsn": db, "tables": ["public.t"]},
        "destinations": [dest],
        "http": {"enabled": False},
    }
    config_path = write_config_file(tmp_path / "walrelay.yaml", raw)

    # A condition PostgreSQL cannot plan: one line at submit, nothing stored.
    code, err = _backfill(config_path, "no_such_column > 1")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (
        '--where is not a condition PostgreSQL accepts on public.t: column "no_such_column"' in err
    )

    # Names are resolved as the chunk reader resolves them (search_path=pg_catalog).
    code, err = _backfill(config_path, "writes()")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "function writes() does not exist" in err and "schema-qualify" in err

    config = make_config(db, ["public.t"], [dest], backfill_poll_interval=0.1)
    config = config.model_copy(update={"http": config.http.model_copy(update={"enabled": False})})
    async with running_engine(config):
        code, err = await asyncio.to_thread(_backfill, config_path, "public.writes()")
        assert code == 0, err
        await wait_for(lambda: _request(db)[0] == "failed", within=30, what="backfill refused")
    _, error = _request(db)
    assert error is not None and "read-only transaction" in error, error
    with psycopg.connect(db) as conn:
        assert conn.execute("select count(*) from side_effects").fetchone() == (0,)
