"""A destination whose server is down when walrelay starts (walrelay.engine.waiting_sink).

walrelay starts anyway: /healthz names the waiting destinations in one line
with the fix, the reachable destination delivers meanwhile, and once the
Redis server and the webhook receiver come up every event arrives, as the
history checker expects. A configuration problem still stops start-up.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio

from tests.integration.support import (
    WebhookReceiver,
    execute,
    read_jsonl,
    running_engine,
    stream_entries,
    wait_for,
)
from walrelay.config import parse_config
from walrelay.engine import Engine
from walrelay.errors import ConfigError, SinkUnavailable
from walrelay.monitor.status import render_status
from walrelay.sinks.registry import build_sink
from walrelay.testing.checker import Change, Delivery, check
from walrelay.testing.pgcluster import free_port
from walrelay.testing.servers import RedisServer

pytestmark = pytest.mark.servers

SECRET_ENV = "WALRELAY_TEST_SECRET"
FAST_RETRY = {"initial": 0.1, "max": 0.5}


def config(db: str, redis_url: str, hook_url: str, out: Path) -> dict[str, Any]:
    def dest(name: str, sink: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "snapshot": "never",
            "retry": FAST_RETRY,
            "parking": {"backoff": FAST_RETRY},
            "sink": sink,
        }

    return {
        "source": {"dsn": db, "tables": ["public.t"], "status_interval": 1},
        "destinations": [
            dest("file", {"type": "file", "path": str(out)}),
            dest("redis", {"type": "redis", "url": redis_url, "prefix": "w", "timeout": 1}),
            dest("hook", {"type": "webhook", "url": hook_url, "secret_env": SECRET_ENV}),
        ],
        "http": {"port": 0, "token_env": "WALRELAY_TEST_TOKEN"},
        "shutdown_timeout": 10,
    }


async def http_get(engine: Engine, path: str) -> tuple[int, str]:
    http = engine.services.http
    assert http is not None
    async with aiohttp.ClientSession() as session, session.get(f"{http.url}{path}") as r:
        return r.status, await r.text()


async def healthz(engine: Engine) -> dict[str, Any]:
    """/healthz once streaming: 200, also while a destination waits (no outage)."""

    async def streaming() -> bool:
        return orjson.loads((await http_get(engine, "/healthz"))[1])["status"] == "streaming"

    await wait_for(streaming, what="streaming")
    code, text = await http_get(engine, "/healthz")
    assert code == 200, text
    doc: dict[str, Any] = orjson.loads(text)
    return doc


def inserted(rows: list[tuple[int, str]]) -> list[Delivery]:
    return [Delivery(uid=n, key=n, order=0, id=i) for n, i in rows]


async def redis_rows(url: str) -> list[tuple[int, str]]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        entries = stream_entries(await client.xrange("w:public.t"))
    finally:
        await client.aclose()
    out = []
    for _, fields in entries:
        event = orjson.loads(fields[b"body"])
        out.append((event["record"]["id"], event["id"]))
    return out


async def test_destinations_down_at_start_wait_and_deliver(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv(SECRET_ENV, secret)
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", "t" * 32)
    execute(db, "create table t (id int primary key)")
    server = RedisServer()
    server.start()  # for its port and data directory; stopped before walrelay starts
    try:
        server.stop(remove=False)
        hook = WebhookReceiver(secret)  # its port: nobody listens there yet
        out = tmp_path / "events.jsonl"
        cfg = parse_config(config(db, server.url, hook.url, out), "(test)")
        async with running_engine(cfg) as engine:
            health = await healthz(engine)
            lines = health.get("not_ready", [])
            assert len(lines) == 2, health
            assert any(line.startswith("destination redis: not reachable yet") for line in lines)
            assert any(line.startswith("destination hook: not reachable yet") for line in lines)
            assert all(" -- fix: " in line and "\n" not in line for line in lines)
            # walrelay status shows the same lines; /metrics says it too.
            shown = render_status(engine.services.status(), "test").splitlines()
            assert set(lines) <= set(shown)
            _, metrics = await http_get(engine, "/metrics")
            assert 'walrelay_destination_ready{destination="redis"} 0.0' in metrics
            assert 'walrelay_destination_ready{destination="file"} 1.0' in metrics

            execute(db, *(f"insert into t values ({n})" for n in range(1, 51)))
            # The reachable destination does not wait for the others.
            await wait_for(lambda: len(read_jsonl(out)) >= 50, what="file events")

            server.start()
            async with hook:
                execute(db, *(f"insert into t values ({n})" for n in range(51, 101)))
                await wait_for(lambda: len(hook.received) >= 100, within=60, what="webhook")
                await wait_for(
                    lambda: len(read_jsonl(out)) >= 100, within=30, what="file events again"
                )
                rows: list[tuple[int, str]] = []

                async def redis_has_all() -> bool:
                    rows[:] = await redis_rows(server.url)
                    return len(rows) >= 100

                await wait_for(redis_has_all, within=60, what="redis events")
                assert "not_ready" not in await healthz(engine)
            expected = [Change(uid=n, key=n, order=0) for n in range(1, 101)]
            hook_rows = [(e["record"]["id"], e["id"]) for e in hook.received]
            file_rows = [(e["record"]["id"], e["id"]) for e in read_jsonl(out)]
            for name, got, dupes_ok in (
                ("redis", rows, False),
                ("file", file_rows, False),
                ("webhook", hook_rows, True),
            ):
                report = check(expected, inserted(got))
                assert report.ok(allow_duplicates=dupes_ok), f"{name}: {report.summary()}"
    finally:
        server.stop()


async def test_a_config_problem_still_stops_start_up(db: str, tmp_path: Path) -> None:
    """A Redis key of another type where the stream should be, with auto_create
    off: a configuration error (exit 2), not a destination to wait for."""
    execute(db, "create table t (id int primary key)")
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        await client.set("w:public.t", "not a stream")
        await client.aclose()
        cfg = parse_config(
            {
                "source": {"dsn": db, "tables": ["public.t"], "status_interval": 1},
                "destinations": [
                    {
                        "name": "redis",
                        "snapshot": "never",
                        "sink": {
                            "type": "redis",
                            "url": server.url,
                            "prefix": "w",
                            "auto_create": False,
                        },
                    }
                ],
                "http": {"enabled": False},
                "shutdown_timeout": 10,
            },
            "(test)",
        )
        with pytest.raises(ConfigError, match=r"stream w:public\.t"):
            async with running_engine(cfg):
                pass


@pytest.mark.parametrize(
    "sink",
    [
        {"type": "redis", "url": "redis://127.0.0.1:{port}/0", "timeout": 1},
        {"type": "nats", "servers": ["nats://127.0.0.1:{port}"], "timeout": 1},
        {"type": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:{port}/", "timeout": 1},
        {"type": "kafka", "bootstrap_servers": "127.0.0.1:{port}", "delivery_timeout": 1},
        {"type": "webhook", "url": "http://127.0.0.1:{port}/hook", "timeout": 1},
        {"type": "postgres", "dsn": "host=127.0.0.1 port={port} dbname=x connect_timeout=1"},
    ],
    ids=lambda s: str(s["type"]),
)
async def test_every_network_sink_says_unavailable_not_misconfigured(sink: dict[str, Any]) -> None:
    """Nobody listens: SinkUnavailable (the destination waits), never a ConfigError."""
    port = free_port()
    filled = {k: _fill(v, port) for k, v in sink.items()}
    cfg = parse_config(
        {
            "source": {"dsn": "host=127.0.0.1 dbname=x", "tables": ["public.t"]},
            "destinations": [{"name": "d", "sink": filled}],
        },
        "(test)",
    )
    built = build_sink(cfg.destinations[0].sink, slot="s", destination="d", tables=["public.t"])
    with pytest.raises(SinkUnavailable) as info:
        await built.open()
    assert str(port) in str(info.value)
    await built.close()


def _fill(value: Any, port: int) -> Any:
    if isinstance(value, str):
        return value.replace("{port}", str(port))
    if isinstance(value, list):
        return [_fill(v, port) for v in value]
    return value


@pytest.mark.parametrize("password", ["wrong", None])
async def test_redis_credentials_refused_are_a_config_error(password: str | None) -> None:
    """Refused credentials are a configuration problem: start-up stops (exit 2)."""
    with RedisServer() as server:
        admin = redis.asyncio.Redis.from_url(server.url)
        await admin.config_set("requirepass", "right")
        await admin.aclose()
        auth = f":{password}@" if password else ""
        url = server.url.replace("redis://", f"redis://{auth}")
        cfg = parse_config(
            {
                "source": {"dsn": "host=127.0.0.1 dbname=x", "tables": ["public.t"]},
                "destinations": [{"name": "d", "sink": {"type": "redis", "url": url}}],
            },
            "(test)",
        )
        sink = build_sink(cfg.destinations[0].sink, destination="d", tables=["public.t"])
        with pytest.raises(ConfigError) as info:
            await sink.open()
        assert "wrong" not in str(info.value)
