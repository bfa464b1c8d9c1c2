"""Issue 7 against a real PostgreSQL: the engine's monitor, alerts, metrics, HTTP API, status.

Alerts are captured by a webhook peer the test runs (Slack-compatible JSON).
The engine's own slot is made inactive by cutting the engine's link to the
server with the test proxy (``walrelay.testing.proxy``); the monitor has its
own direct connection (``monitor.dsn``), as it would through a separate
monitoring role.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
from aiohttp import web

from tests.conftest import StartProxy
from tests.integration.support import (
    count_lines,
    dsn_port,
    dsn_with_port,
    execute,
    running_engine,
    wait_for,
    write_config_file,
)
from walrelay.config import parse_config
from walrelay.engine import Engine
from walrelay.testing.pgcluster import PgCluster, free_port, start_cluster

TOKEN = "test-token-7f3a9c"


class AlertPeer:
    """A Slack-style incoming webhook: records every {"text": ...} it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[float, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T0/B0/secret"

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        assert set(body) == {"text"}, body
        self.messages.append((time.monotonic(), body["text"]))
        return web.Response(text="ok")

    def about(self, needle: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if needle in m]

    def kinds(self, needle: str) -> list[str]:
        return [m.split("]")[0].lstrip("[") for _, m in self.about(needle)]

    async def __aenter__(self) -> AlertPeer:
        app = web.Application()
        app.router.add_post("/services/T0/B0/secret", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def monitor_config(
    dsn: str,
    out: Path,
    *,
    slot: str,
    peer: AlertPeer | None = None,
    monitor_dsn: str | None = None,
    http_port: int = 0,
    thresholds: dict[str, Any] | None = None,
    **source: Any,
) -> dict[str, Any]:
    src: dict[str, Any] = {
        "dsn": dsn,
        "slot": slot,
        "publication": f"{slot}_pub",
        "tables": ["public.items"],
        "status_interval": 1,
        "reconnect": {"initial": 0.2, "max": 0.5},
    }
    src.update(source)
    return {
        "source": src,
        "destinations": [{"name": "file", "sink": {"type": "file", "path": str(out)}}],
        "shutdown_timeout": 10,
        "monitor": {
            "interval": "200ms",
            **({"dsn": monitor_dsn} if monitor_dsn else {}),
            "thresholds": thresholds or {},
        },
        "alerts": {"webhooks": [{"url": peer.url}] if peer else []},
        "http": {"port": http_port, "token_env": "WALRELAY_TEST_TOKEN"},
    }


async def test_inactive_slot_warns_then_pages_then_resolves(
    db: str, tmp_path: Path, monkeypatch: Any, tcp_proxy: StartProxy
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", TOKEN)
    execute(db, "create table items (id int primary key, v text)")
    out = tmp_path / "out.jsonl"
    proxy = await tcp_proxy(dsn_port(db))
    async with AlertPeer() as peer:
        raw = monitor_config(
            dsn_with_port(db, proxy.port),
            out,
            slot="mon_inactive",
            peer=peer,
            monitor_dsn=db,
            thresholds={"slot_inactive_warn_seconds": "1s", "slot_inactive_page_seconds": "2s"},
        )
        # The state database (the HA lock) stays reachable: only the replication link is cut.
        raw["state"] = {"dsn": db}
        config = parse_config(raw)
        async with running_engine(config) as engine:
            http = engine.services.http
            assert http is not None
            async with aiohttp.ClientSession() as client:

                async def health() -> int:
                    async with client.get(f"{http.url}/healthz") as r:
                        return r.status

                await wait_for(lambda: engine.services.state() == "streaming", what="streaming")
                assert await health() == 200
                execute(db, "insert into items select g, 'a' from generate_series(1, 10) g")
                await wait_for(lambda: count_lines(out) == 10, what="10 events")

                monitor = engine.services.monitor
                assert monitor is not None

                def seen_active() -> bool:
                    snap = monitor.snapshot
                    own = snap.slot("mon_inactive") if snap is not None else None
                    return own is not None and own.active

                await wait_for(seen_active, what="a check that saw the slot in use")
                # Cut the engine off: its slot loses its consumer.
                cut_at = time.monotonic()
                proxy.cut()
                await wait_for(lambda: engine.services.state() != "streaming", what="link cut")
                assert await health() == 503
                execute(db, "insert into items select g, 'b' from generate_series(11, 20) g")
                await wait_for(lambda: peer.kinds("slot mon_inactive") == ["WARN"], what="warn")
                warn_at = peer.about("slot mon_inactive")[0][0]
                await wait_for(
                    lambda: peer.kinds("slot mon_inactive") == ["WARN", "PAGE"], what="page"
                )
                page_at = peer.about("slot mon_inactive")[1][0]
                # Within the configured durations (1s warn, 2s page; 200ms checks).
                assert 1.0 <= warn_at - cut_at < 3.0, warn_at - cut_at
                assert 2.0 <= page_at - cut_at < 4.0, page_at - cut_at
                assert page_at - warn_at >= 0.8
                texts = [m for _, m in peer.about("slot mon_inactive")]
                assert "walrelay is not streaming" in texts[0]
                # The API shows it too.
                async with client.get(
                    f"{http.url}/api/status", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as r:
                    doc = await r.json()
                (alert,) = [a for a in doc["alerts"] if a["rule"] == "slot_inactive"]
                assert alert["severity"] == "page" and alert["object"] == "slot mon_inactive"
                (row,) = [s for s in doc["slots"] if s["name"] == "mon_inactive"]
                assert row["owned"] and not row["active"] and row["inactive_seconds"] >= 2.0

                # Link back: the engine reconnects, the alert resolves, once.
                proxy.restore()
                await wait_for(
                    lambda: peer.kinds("slot mon_inactive") == ["WARN", "PAGE", "RESOLVED"],
                    what="resolved",
                )
                await wait_for(lambda: count_lines(out) == 20, what="events after the cut")
                assert await health() == 200
                # Deliberate: let three more checks pass to prove nothing is sent again.
                await asyncio.sleep(0.6)
                assert peer.kinds("slot mon_inactive") == ["WARN", "PAGE", "RESOLVED"]
                assert engine.stats.reconnects >= 1


async def test_retained_wal_of_another_slot_fires_and_resolves(
    db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", TOKEN)
    execute(db, "create table items (id int primary key, v text)", "create table filler (v text)")
    async with AlertPeer() as peer:
        config = parse_config(
            monitor_config(
                db,
                tmp_path / "out.jsonl",
                slot="mon_wal",
                peer=peer,
                thresholds={
                    "retained_wal_warn_bytes": "2MB",
                    "retained_wal_page_bytes": "1GB",
                },
            )
        )
        async with running_engine(config) as engine:
            execute(db, "select pg_create_logical_replication_slot('mon_lagging', 'pgoutput')")
            monitor = engine.services.monitor
            assert monitor is not None

            def lagging_seen() -> bool:
                snap = monitor.snapshot
                return snap is not None and snap.slot("mon_lagging") is not None

            await wait_for(lagging_seen, what="a check that saw mon_lagging")
            assert peer.about("slot mon_lagging") == []
            # ~4 MB of WAL that nobody consumes from mon_lagging.
            execute(db, "insert into filler select repeat('x', 1000) from generate_series(1, 4000)")
            await wait_for(lambda: peer.kinds("slot mon_lagging") == ["WARN"], what="warn")
            text = peer.about("slot mon_lagging")[0][1]
            assert "retains" in text and "not walrelay's" in text and "warn at 2.0 MB" in text
            assert "pg_drop_replication_slot('mon_lagging')" in text
            snap = engine.services.monitor.snapshot  # type: ignore[union-attr]
            assert snap is not None
            lagging = snap.slot("mon_lagging")
            assert lagging is not None and (lagging.retained_bytes or 0) >= 2 * 1024 * 1024
            execute(db, "select pg_drop_replication_slot('mon_lagging')")
            await wait_for(
                lambda: peer.kinds("slot mon_lagging") == ["WARN", "RESOLVED"], what="resolved"
            )


EXPECTED_METRICS = [
    "walrelay_streaming",
    "walrelay_events_in_total",
    "walrelay_events_out_total",
    "walrelay_delivery_latency_seconds",
    "walrelay_delivery_lag_seconds",
    "walrelay_in_flight_events",
    "walrelay_buffered_events",
    "walrelay_buffered_bytes",
    "walrelay_parked_events",
    "walrelay_dead_events",
    "walrelay_confirmed_lsn",
    "walrelay_heartbeat_lag_seconds",
    "walrelay_slot_active",
    "walrelay_slot_retained_wal_bytes",
    "walrelay_slot_pending_wal_bytes",
    "walrelay_slot_inactive_seconds",
    "walrelay_slot_spill_bytes_total",
    "walrelay_pg_wal_bytes",
    "walrelay_oldest_transaction_seconds",
    "walrelay_alerts_open",
    "walrelay_monitor_last_check_timestamp_seconds",
]


def grafana_metric_names() -> set[str]:
    grafana = (Path(__file__).resolve().parents[2] / "grafana" / "walrelay.json").read_text()
    return set(re.findall(r"walrelay_[a-z_]+", grafana))


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_move_and_token_is_enforced(
    db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", TOKEN)
    execute(db, "create table items (id int primary key, v text)")
    out = tmp_path / "out.jsonl"
    config = parse_config(monitor_config(db, out, slot="mon_metrics"))
    async with running_engine(config) as engine, aiohttp.ClientSession() as client:
        http = engine.services.http
        assert http is not None
        await wait_for(lambda: engine.services.monitor.snapshot is not None, what="a check")  # type: ignore[union-attr]

        async def metrics() -> tuple[str, dict[str, float]]:
            async with client.get(f"{http.url}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            return text, parse_metrics(text)

        d = '{destination="file"}'
        own = '{database="' + db.rsplit("=", 1)[1] + '",owned="true",slot="mon_metrics"}'

        async def streaming_seen() -> bool:
            _, m = await metrics()
            return m.get("walrelay_streaming") == 1.0 and m.get(f"walrelay_slot_active{own}") == 1.0

        # The first monitor check may predate START_REPLICATION (or the snapshot).
        await wait_for(streaming_seen, what="the monitor to see the slot streaming")
        text, before = await metrics()
        for name in EXPECTED_METRICS:
            assert f"# TYPE {name} " in text, name
        # The Grafana dashboard only uses metrics that exist.
        used = grafana_metric_names()
        exported = set(re.findall(r"^# TYPE (walrelay_[a-z_]+) ", text, re.M))
        suffixes = ("_bucket", "_count", "_sum")
        missing = {u for u in used if u not in exported and not u.endswith(suffixes)}
        assert not missing, missing
        assert {u.removesuffix("_bucket") for u in used if u.endswith("_bucket")} <= exported
        assert before["walrelay_streaming"] == 1.0
        assert before[f"walrelay_slot_active{own}"] == 1.0
        assert f"walrelay_slot_retained_wal_bytes{own}" in before

        execute(db, "insert into items select g, 'x' from generate_series(1, 500) g")
        await wait_for(lambda: count_lines(out) == 500, what="500 events")
        last_check = "walrelay_monitor_last_check_timestamp_seconds"
        _, burst = await metrics()

        async def checked_after_burst() -> bool:
            _, m = await metrics()
            return m[last_check] > burst[last_check]

        await wait_for(checked_after_burst, what="a monitor check after the burst")
        _, after = await metrics()

        def moved(name: str) -> float:
            return after[name] - before.get(name, 0.0)

        assert moved(f"walrelay_events_in_total{d}") == 500
        assert moved(f"walrelay_events_out_total{d}") == 500
        count = f"walrelay_delivery_latency_seconds_count{d}"
        assert moved(count) == 500
        inf = 'walrelay_delivery_latency_seconds_bucket{destination="file",le="+Inf"}'
        assert after[inf] == after[count]
        assert after["walrelay_confirmed_lsn"] > before["walrelay_confirmed_lsn"]
        assert after[f"walrelay_in_flight_events{d}"] == 0
        assert after["walrelay_source_events_total"] >= 500
        assert (
            after["walrelay_monitor_last_check_timestamp_seconds"]
            > before["walrelay_monitor_last_check_timestamp_seconds"]
        )

        # The token: /healthz and /metrics open, everything else needs it.
        base = http.url
        async with client.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "streaming"
        for path in ("/api/status", "/static/dashboard.js"):
            async with client.get(f"{base}{path}") as r:
                assert r.status == 401, path
            async with client.get(f"{base}{path}", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401, path
            async with client.get(
                f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200, path
        async with client.get(f"{base}/") as r:
            assert r.status == 401 and "API token" in await r.text()
        async with client.get(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and "walrelay" in await r.text()
        async with client.get(
            f"{base}/api/status", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            doc = await r.json()
        (dest,) = doc["destinations"]
        assert dest["events_out"] == 500 and dest["parked"] == 0 and dest["dead"] == 0
        assert doc["state"] == "streaming" and doc["slot"] == "mon_metrics"


async def _walrelay(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "walrelay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_status_command_asks_the_engine_then_falls_back_to_postgres(
    db: str, tmp_path: Path
) -> None:
    execute(db, "create table items (id int primary key, v text)")
    out = tmp_path / "out.jsonl"
    raw = monitor_config(db, out, slot="mon_status", http_port=free_port())
    path = write_config_file(tmp_path / "walrelay.yaml", raw)
    env = {"WALRELAY_TEST_TOKEN": TOKEN}
    os.environ["WALRELAY_TEST_TOKEN"] = TOKEN
    try:
        config = parse_config(raw)
        async with running_engine(config) as engine:
            execute(db, "insert into items select g, 'x' from generate_series(1, 7) g")
            await wait_for(lambda: count_lines(out) == 7, what="7 events")
            await wait_for(lambda: engine.services.monitor.snapshot is not None, what="check")  # type: ignore[union-attr]
            code, text, err = await _walrelay("status", "--config", str(path), env=env)
            assert code == 0, (text, err)
            assert f"engine at http://127.0.0.1:{raw['http']['port']}: streaming" in text
            assert re.search(r"^file\s+file\s+7\s+7\s", text, re.M), text
            assert re.search(r"^mon_status\s+\S+\s+yes\s+yes\s+reserved", text, re.M), text
            code, js, _ = await _walrelay("status", "--config", str(path), "--json", env=env)
            doc = orjson.loads(js)
            assert code == 0 and doc["source"] == "engine"
            assert doc["destinations"][0]["events_out"] == 7
            # A wrong token: the engine refuses, status says so and falls back.
            code, text, _ = await _walrelay(
                "status", "--config", str(path), env={"WALRELAY_TEST_TOKEN": "wrong"}
            )
            assert code == 1 and "rejected the token" in text
        # Not running: read from PostgreSQL, and say so.
        code, text, err = await _walrelay("status", "--config", str(path), env=env)
        assert code == 1, (text, err)
        assert "no walrelay answers at" in text and "does not seem to be running" in text
        assert "read directly from PostgreSQL" in text
        assert re.search(r"^mon_status\s+\S+\s+yes\s+no\s+reserved", text, re.M), text
    finally:
        del os.environ["WALRELAY_TEST_TOKEN"]


async def test_status_fallback_reports_a_lost_slot_of_another_consumer(tmp_path: Path) -> None:
    """A slot invalidated by max_slot_wal_keep_size shows as lost, page-level."""
    cluster: PgCluster = start_cluster({"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB"})
    try:
        dsn = cluster.dsn()
        execute(dsn, "create table items (id int primary key)", "create table filler (v text)")
        execute(dsn, "select pg_create_logical_replication_slot('mon_victim', 'pgoutput')")
        for _ in range(3):
            execute(
                dsn,
                "insert into filler select repeat('x', 1000) from generate_series(1, 20000)",
                "select pg_switch_wal()",
                "checkpoint",
            )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "select wal_status from pg_replication_slots where slot_name = 'mon_victim'"
            ).fetchone()
        assert row is not None and row[0] == "lost"
        raw = monitor_config(dsn, tmp_path / "o.jsonl", slot="mon_absent", http_port=free_port())
        path = write_config_file(tmp_path / "walrelay.yaml", raw)
        code, js, err = await _walrelay(
            "status", "--config", str(path), "--json", env={"WALRELAY_TEST_TOKEN": TOKEN}
        )
        assert code == 1, err
        doc = orjson.loads(js)
        assert doc["source"] == "database" and "not reachable" in doc["engine"]
        alerts = {(a["rule"], a["object"]): a for a in doc["alerts"]}
        lost = alerts[("slot_wal_status", "slot mon_victim")]
        assert lost["severity"] == "page" and "lost" in lost["message"]
        assert "pg_drop_replication_slot('mon_victim')" in lost["fix"]
        # walrelay's own slot does not exist (never started): page too.
        assert alerts[("slot_missing", "slot mon_absent")]["severity"] == "page"
    finally:
        cluster.stop()


async def test_engine_keeps_running_when_the_http_port_is_taken(db: str, tmp_path: Path) -> None:
    """A busy port must not stop CDC: logged, alerted, the engine streams on."""
    execute(db, "create table items (id int primary key, v text)")
    out = tmp_path / "out.jsonl"
    blocker = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    os.environ["WALRELAY_TEST_TOKEN"] = TOKEN
    try:
        config = parse_config(monitor_config(db, out, slot="mon_port", http_port=port))
        async with running_engine(config) as engine:
            assert isinstance(engine, Engine) and engine.services.http is None
            execute(db, "insert into items values (1, 'x')")
            await wait_for(lambda: count_lines(out) == 1, what="the event")
            await wait_for(
                lambda: any(a.rule == "http_unavailable" for a in engine.services.open_alerts()),
                what="the alert",
            )
    finally:
        del os.environ["WALRELAY_TEST_TOKEN"]
        blocker.close()
        await blocker.wait_closed()
