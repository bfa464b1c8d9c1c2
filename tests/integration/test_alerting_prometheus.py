"""A real Prometheus scrapes a running walrelay with the shipped rules, and a
real Alertmanager routes to a webhook receiver (Debian's prometheus and
prometheus-alertmanager): a destination failing every event raises the
warning, then the page; recovery resolves them; stopping walrelay raises
WalrelayDown, and starting it again resolves that. walrelay also pushes its
own alerts to the same Alertmanager (API v2, ``alerts.alertmanager``): its
delivery-lag alert (parked events counted) fires and resolves there too.

The rules are the shipped file with its durations shortened (``for: 1m`` ->
2 s, ``for: 5m`` -> 6 s, rate windows 1m -> 4 s); the real durations are
pinned by the promtool rule unit tests (test_alerting_rules.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from tests.integration.support import WebhookReceiver, execute, running_engine, wait_for
from walrelay.config import Config, parse_config
from walrelay.testing.pgcluster import free_port

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "walrelay-rules.yml"
SECRET_ENV = "WALRELAY_TEST_ALERTING_SECRET"
TOKEN_ENV = "WALRELAY_TEST_ALERTING_TOKEN"


def short_rules(text: str) -> str:
    text = re.sub(r"for: 1m\b", "for: 2s", text)
    text = re.sub(r"for: 5m\b", "for: 6s", text)
    text = re.sub(r"for: 15m\b", "for: 10s", text)
    return text.replace("[1m]", "[4s]").replace("[5m]", "[10s]")


class AlertReceiver:
    """Alertmanager's webhook receiver: every alert of every notification."""

    def __init__(self) -> None:
        self.port = free_port()
        self.alerts: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    def seen(self, alertname: str, status: str, **labels: str) -> bool:
        return any(
            a["status"] == status
            and a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in self.alerts
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.alerts.extend(body["alerts"])
        return web.Response(status=200)

    async def __aenter__(self) -> AlertReceiver:
        app = web.Application()
        app.router.add_post("/am", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def alerting_stack(
    tmp: Path,
    walrelay_port: int,
    receiver_port: int,
    am_port: int,
    *,
    extra_rules: str | None = None,
    extra_jobs: dict[str, int] | None = None,
) -> AsyncIterator[int]:
    """Alertmanager -> receiver, and Prometheus scraping walrelay every second
    (plus ``extra_jobs``: job name -> port, with ``extra_rules`` loaded too)."""
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager")
    assert prometheus and alertmanager, "bash scripts/servers/install.sh prometheus"
    prom_port = free_port()
    (tmp / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "severity", "destination"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [
                            {"url": f"http://127.0.0.1:{receiver_port}/am", "send_resolved": True}
                        ],
                    }
                ],
            }
        )
    )
    (tmp / "rules.yml").write_text(short_rules(RULES.read_text()))
    rule_files = [str(tmp / "rules.yml")]
    if extra_rules is not None:
        (tmp / "extra-rules.yml").write_text(extra_rules)
        rule_files.append(str(tmp / "extra-rules.yml"))
    jobs = {"walrelay": walrelay_port, **(extra_jobs or {})}
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rule_files,
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                    for job, port in jobs.items()
                ],
            }
        )
    )
    am_args = [
        alertmanager,
        f"--config.file={tmp / 'am.yml'}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    prom_args = [
        prometheus,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--rules.alert.resend-delay=1s",
    ]
    with (
        _process(am_args, tmp / "alertmanager.log"),
        _process(prom_args, tmp / "prometheus.log"),
    ):
        yield prom_port


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "whsec_" + "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    monkeypatch.setenv(TOKEN_ENV, "t0ken-for-the-alerting-test")


async def test_failing_destination_pages_through_prometheus_and_alertmanager(
    db: str, tmp_path: Path, env: None
) -> None:
    execute(db, "create table items (id serial primary key, v text)")
    http_port, am_port = free_port(), free_port()
    hook = WebhookReceiver(os.environ[SECRET_ENV])
    hook.status = 500  # every event fails

    def configured() -> Config:
        return parse_config(
            {
                "source": {
                    "dsn": db,
                    "slot": "alerting",
                    "publication": "alerting_pub",
                    "tables": ["public.items"],
                    "status_interval": 1,
                },
                "destinations": [
                    {
                        "name": "hook",
                        "sink": {"type": "webhook", "url": hook.url, "secret_env": SECRET_ENV},
                        "parking": {"park_after": 1, "backoff": {"initial": 0.2, "max": 0.5}},
                        "snapshot": "never",
                    }
                ],
                "shutdown_timeout": 5,
                "http": {"port": http_port, "token_env": TOKEN_ENV},
                "monitor": {
                    "interval": "500ms",
                    "thresholds": {"delivery_lag_warn_seconds": 2, "delivery_lag_page_seconds": 4},
                },
                "alerts": {"alertmanager": [{"url": f"http://127.0.0.1:{am_port}"}]},
                "ledger": {"type": "none"},
            },
            "(test)",
        )

    async def keep_writing() -> None:
        while True:
            await asyncio.to_thread(execute, db, "insert into items (v) values ('x')")
            await asyncio.sleep(0.3)  # a steady trickle of changes, not synchronisation

    async with (
        hook,
        AlertReceiver() as receiver,
        alerting_stack(tmp_path, http_port, receiver.port, am_port),
    ):
        async with running_engine(configured()):
            writer = asyncio.create_task(keep_writing())
            try:
                await wait_for(
                    lambda: receiver.seen(
                        "WalrelayDestinationFailing",
                        "firing",
                        severity="warn",
                        destination="hook",
                        slot="alerting",
                    ),
                    within=40,
                    what="the failing warning at the receiver",
                )
                await wait_for(
                    lambda: receiver.seen(
                        "WalrelayDestinationFailing", "firing", severity="page", slot="alerting"
                    ),
                    within=20,
                    what="the failing page at the receiver",
                )
                # walrelay's own alert, pushed to Alertmanager: the lag of parked events
                await wait_for(
                    lambda: receiver.seen(
                        "walrelay_delivery_lag",
                        "firing",
                        severity="page",
                        destination="hook",
                        slot="alerting",
                    ),
                    within=30,
                    what="walrelay's own delivery-lag page via Alertmanager",
                )
                hook.status = 200  # the destination recovers
                await wait_for(
                    lambda: receiver.seen("walrelay_delivery_lag", "resolved", severity="page"),
                    within=30,
                    what="walrelay's own delivery-lag page to resolve",
                )
                for severity in ("warn", "page"):
                    await wait_for(
                        lambda s=severity: receiver.seen(  # type: ignore[misc]
                            "WalrelayDestinationFailing", "resolved", severity=s
                        ),
                        within=30,
                        what=f"the {severity} to resolve",
                    )
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        # walrelay stopped: the target is down
        await wait_for(
            lambda: receiver.seen("WalrelayDown", "firing", severity="page"),
            within=30,
            what="WalrelayDown at the receiver",
        )
        async with running_engine(configured()):
            await wait_for(
                lambda: receiver.seen("WalrelayDown", "resolved"),
                within=30,
                what="WalrelayDown to resolve",
            )
