"""Shared helpers for integration tests: engine runner, waiting, a webhook peer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Self

import orjson
import psycopg
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# The one poller (tests/waiting.py), re-exported for the integration tests.
from tests.waiting import wait_for as wait_for
from tests.waiting import wait_for_sync as wait_for_sync
from walrelay.config import Config, parse_config
from walrelay.engine import Engine
from walrelay.model import parse_lsn
from walrelay.sinks.signing import verify
from walrelay.testing.pgcluster import free_port


def make_config(
    dsn: str,
    tables: list[str],
    destinations: list[dict[str, Any]],
    **source: Any,
) -> Config:
    src: dict[str, Any] = {"dsn": dsn, "tables": tables, "status_interval": 1}
    src.update(source)
    return parse_config(
        {"source": src, "destinations": destinations, "shutdown_timeout": 10}, "(test)"
    )


@contextlib.asynccontextmanager
async def running_engine(config: Config, **kwargs: Any) -> AsyncIterator[Engine]:
    engine = Engine(config, **kwargs)
    task = asyncio.create_task(engine.run())
    started = asyncio.create_task(engine.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED, timeout=60)
    if task.done():
        started.cancel()
        task.result()
    assert engine.started.is_set(), "engine did not start"
    try:
        yield engine
    finally:
        engine.request_stop()
        try:
            await asyncio.wait_for(task, timeout=60)
        finally:
            if not task.done():
                task.cancel()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is not read
    return [orjson.loads(line) for line in complete.splitlines() if line.strip()]


def count_lines(path: str | Path) -> int:
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def execute(dsn: str, *statements: str, params: tuple[Any, ...] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


StreamEntry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: object) -> list[StreamEntry]:
    """An ``XRANGE`` reply of a Redis client without ``decode_responses``, with
    the types it has (redis-py types every reply for both modes: ``bytes | str``)."""
    assert isinstance(reply, list), reply
    return [(bytes(eid), {bytes(k): bytes(v) for k, v in fields.items()}) for eid, fields in reply]


def dsn_port(dsn: str) -> int:
    return int(str(conninfo_to_dict(dsn)["port"]))


def dsn_with_port(dsn: str, port: int) -> str:
    """The same connection string to another loopback port (e.g. a TcpProxy's)."""
    return make_conninfo(dsn, host="127.0.0.1", port=port)


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return parse_lsn(row[0])


def slot_state(dsn: str, slot: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn::text, active, active_pid, "
            "pg_current_wal_lsn()::text, restart_lsn::text "
            "from pg_replication_slots where slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None:
        return {}
    return {
        "confirmed": parse_lsn(row[0]) if row[0] else 0,
        "active": row[1],
        "active_pid": row[2],
        "current": parse_lsn(row[3]),
        "restart": parse_lsn(row[4]) if row[4] else 0,
    }


class WebhookReceiver:
    """A webhook peer we control: verifies signatures, can delay or fail on demand."""

    def __init__(self, secret: str, *, delay: tuple[float, float] = (0.0, 0.0)) -> None:
        self.secret = secret
        self.delay = delay
        self.received: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.status = 200
        self.fail_when: Callable[[dict[str, Any]], bool] | None = None
        self.requests = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._rng = random.Random(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        key = self.secret.removeprefix("whsec_")
        import base64

        verify(base64.b64decode(key), dict(request.headers), body)
        event = orjson.loads(body)
        if self.delay[1] > 0:
            await asyncio.sleep(self._rng.uniform(*self.delay))  # a slow peer, on purpose
        if self.status != 200 or (self.fail_when is not None and self.fail_when(event)):
            return web.Response(status=self.status if self.status != 200 else 503)
        assert request.headers["webhook-id"] == event["id"]
        self.received.append(event)
        self.ids.append(event["id"])
        return web.Response(status=204)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def write_config_file(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def walrelay_process(
    config_path: Path, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m walrelay run`` as a child; killed by its own pid on exit."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "walrelay", "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    log.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


class RowWriter(threading.Thread):
    """Inserts ``t``'s rows, one transaction each, until stopped; remembers what committed."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.committed: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    conn.execute("insert into t values (%s)", (n,))
                    self.committed.append(n)
                    self.stop.wait(0.005)  # pacing: ~200 transactions/s
        except BaseException as e:
            self.error = e

    async def finish(self) -> list[int]:
        self.stop.set()
        await asyncio.to_thread(self.join, 10)
        assert self.error is None, self.error
        return self.committed
