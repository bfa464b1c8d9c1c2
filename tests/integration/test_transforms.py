"""Transforms end to end against a real cluster: nothing excluded ever leaves,
whatever the entrance (snapshot, stream with REPLICA IDENTITY FULL, backfill)
or the path (parked, retried), and a python hook failing for one key parks
that key in order while the others flow."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from click.testing import CliRunner

from tests.integration.support import (
    WebhookReceiver,
    execute,
    running_engine,
    wait_for,
    write_config_file,
)
from walrelay.cli import main
from walrelay.config import parse_config

SECRET_ENV = "WALRELAY_TEST_SECRET"
TOKEN_ENV = "WALRELAY_TEST_TOKEN"
TOKEN = "transforms-test-token"
HOOK_MODULE = """
import pathlib

FLAG = pathlib.Path({flag!r})


def enrich(event):
    record = event["record"] or event["old"]
    if FLAG.exists() and record["id"] == 7:
        raise RuntimeError("crm lookup failed for customer 7")
    if event["record"] is not None:
        event["record"]["enriched"] = True
    return event
"""


def ssn(i: int) -> str:
    return f"ssn-{i}-secret"


def parked(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("select to_regclass('walrelay.parked_events')").fetchone()
        if not exists or exists[0] is None:
            return []
        cur = conn.execute(
            "select event_id, payload::text, last_error from walrelay.parked_events"
            " order by commit_lsn, seq"
        )
        return [{"id": r[0], "body": r[1], "error": r[2]} for r in cur.fetchall()]


def config_dict(dsn: str, url: str, module: str) -> dict[str, Any]:
    return {
        "source": {
            "dsn": dsn,
            "tables": ["public.customers"],
            "status_interval": 0.2,
            "backfill_poll_interval": 0.1,
        },
        "destinations": [
            {
                "name": "crm",
                "max_in_flight": 8,
                "retry": {"initial": 0.02, "max": 0.05},
                "parking": {"park_after": 2, "backoff": {"initial": 0.2, "max": 0.5}},
                "sink": {"type": "webhook", "url": url, "secret_env": SECRET_ENV},
                "transforms": [
                    {"exclude": {"tables": ["customers"], "columns": ["ssn"]}},
                    {"python": f"{module}:enrich"},
                ],
            }
        ],
        "http": {"port": 0, "token_env": TOKEN_ENV},
        "shutdown_timeout": 10,
    }


def no_ssn(text: str) -> bool:
    return "-secret" not in text and '"ssn"' not in text


async def test_excluded_column_never_leaves_and_a_failing_hook_parks_one_key(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="walrelay")
    secret = "whsec_" + base64.b64encode(b"transforms-test-secret-32-bytes!").decode()
    monkeypatch.setenv(SECRET_ENV, secret)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    flag = tmp_path / "fail-7"
    module = "walrelay_test_crm_hook"
    (tmp_path / f"{module}.py").write_text(HOOK_MODULE.format(flag=str(flag)))
    monkeypatch.syspath_prepend(str(tmp_path))
    execute(
        db,
        "create table customers (id int primary key, email text, ssn text, version int)",
        "alter table customers replica identity full",
        "insert into customers select g, 'c' || g || '@x.org', 'ssn-' || g || '-secret', 0"
        " from generate_series(1, 3) g",
    )
    async with WebhookReceiver(secret) as hook:
        conf = config_dict(db, hook.url, module)
        path = write_config_file(tmp_path / "walrelay.yaml", conf)
        async with running_engine(parse_config(conf, "(test)")) as engine:
            # Snapshot rows.
            await wait_for(lambda: len(hook.received) == 3, what="the snapshot rows")
            assert {e["op"] for e in hook.received} == {"read"}
            flag.touch()  # the hook fails for customer 7 from now on
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("insert into customers values (7, 'c7@x.org', %s, 0)", (ssn(7),))
                for v in (1, 2):
                    conn.execute("update customers set version = %s where id = 7", (v,))
                conn.execute("update customers set version = 1 where id = 2")
                conn.execute("delete from customers where id = 3")
                conn.execute("insert into customers values (8, 'c8@x.org', %s, 0)", (ssn(8),))
            await wait_for(lambda: len(hook.received) == 6, what="the other keys' changes")
            await wait_for(lambda: len(parked(db)) == 3, what="customer 7's events parked")
            by_op = {e["op"]: e for e in hook.received[3:]}
            assert by_op["update"]["old"]["version"] == 0  # the whole old row, without ssn
            assert "ssn" not in by_op["update"]["old"] and "ssn" not in by_op["update"]["record"]
            assert "ssn" not in by_op["delete"]["old"]
            rows = parked(db)
            assert all(no_ssn(r["body"]) for r in rows)  # the parked payload
            assert "Traceback" in rows[0]["error"]
            assert "crm lookup failed for customer 7" in rows[0]["error"]
            shown = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "walrelay",
                    "failed",
                    "show",
                    "--config",
                    str(path),
                    "--id",
                    rows[0]["id"],
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 0, shown.stderr
            assert "crm lookup failed for customer 7" in shown.stdout
            assert "Traceback" in shown.stdout and no_ssn(shown.stdout)
            assert [e for e in hook.received if (e["record"] or {}).get("id") == 7] == []
            # The dashboard's API and /metrics: the failure shows, the column does not.
            http = engine.services.http
            assert http is not None
            async with aiohttp.ClientSession() as client:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with client.get(f"{http.url}/api/status", headers=auth) as r:
                    status = await r.text()
                async with client.get(f"{http.url}/metrics") as r:
                    metrics = await r.text()
            assert "crm lookup failed" in status and no_ssn(status)
            step = 'destination="crm",kind="python",step="2"'
            assert f"walrelay_transform_errors_total{{{step}}}" in metrics
            assert 'walrelay_transform_stopped{destination="crm"} 0.0' in metrics

            # The hook recovers: parking retries customer 7 in order.
            flag.unlink()
            await wait_for(lambda: parked(db) == [], what="the parked events delivered")
            sevens = [e["record"] for e in hook.received if (e["record"] or {}).get("id") == 7]
            assert [r["version"] for r in sevens] == [0, 1, 2]
            assert all(r["enriched"] for r in sevens)

            # A backfill goes through the same chain.
            before = len(hook.received)
            result = await asyncio.to_thread(
                CliRunner().invoke,
                main,
                [
                    "backfill",
                    "--config",
                    str(path),
                    "--destination",
                    "crm",
                    "--table",
                    "customers",
                    "--no-wait",
                ],
            )
            assert result.exit_code == 0, result.output
            await wait_for(
                lambda: len(hook.received) == before + 4, what="the backfill rows (1, 2, 7, 8)"
            )
            reads = hook.received[before:]
            assert {e["op"] for e in reads} == {"read"}
            assert all(e["record"]["enriched"] for e in reads)
            assert engine.router is not None
            stats = engine.router.chains["crm"].steps[1]
            assert stats.errors >= 3
    sent = orjson.dumps(hook.received).decode()
    assert no_ssn(sent)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert no_ssn(logged)
