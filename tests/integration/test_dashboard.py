"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

Playwright's own browser downloads are never used: the test launches
``/usr/bin/chromium`` (``scripts/install-browser.sh`` installs it; the test
command runs that). It logs in with the token, watches the numbers move
while a writer inserts rows, sees a fired alert appear, and saves a
screenshot to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.integration.support import execute, running_engine, wait_for
from walrelay.config import parse_config

if TYPE_CHECKING:
    from playwright.async_api import Locator

TOKEN = "dashboard-token-5b1e"
CHROMIUM = os.environ.get("WALRELAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need_browser() -> None:
    if Path(CHROMIUM).exists():
        return
    message = "Debian's chromium is not installed: run scripts/install-browser.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _number(text: str) -> float:
    return float(text.replace(",", "").split()[0]) if text.strip() not in ("", "-") else -1.0


async def test_dashboard_renders_moves_and_shows_alerts(
    db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    _need_browser()
    from playwright.async_api import async_playwright

    monkeypatch.setenv("WALRELAY_TEST_TOKEN", TOKEN)
    execute(db, "create table items (id bigserial primary key, v text)")
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "slot": "dash",
                "publication": "dash_pub",
                "tables": ["public.items"],
                "status_interval": 1,
            },
            "destinations": [
                {"name": "orders-file", "sink": {"type": "file", "path": str(tmp_path / "a")}},
                {"name": "audit-file", "sink": {"type": "file", "path": str(tmp_path / "b")}},
            ],
            "shutdown_timeout": 10,
            "monitor": {
                "interval": "250ms",
                "thresholds": {
                    "slot_inactive_warn_seconds": "1s",
                    "slot_inactive_page_seconds": "30s",
                },
            },
            "http": {"port": 0, "token_env": "WALRELAY_TEST_TOKEN"},
        }
    )
    stop_writing = asyncio.Event()

    async def writer() -> None:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            while not stop_writing.is_set():
                await conn.execute("insert into items (v) select 'x' from generate_series(1, 25)")
                await asyncio.sleep(0.05)  # a steady trickle of transactions

    async with running_engine(config) as engine, async_playwright() as pw:
        http = engine.services.http
        assert http is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        writing = asyncio.create_task(writer())
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1200})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            # Without the token: the login form, no data.
            resp = await page.goto(http.url)
            assert resp is not None and resp.status == 401
            assert await page.locator("#chart-throughput").count() == 0
            await page.fill("#token", "wrong")
            await page.click("#login")
            assert await page.locator("#denied").is_visible()
            await page.fill("#token", TOKEN)
            await page.click("#login")
            await page.wait_for_selector("#chart-throughput")
            problems.clear()  # the 401s of the login page were logged as console errors

            state = page.get_by_test_id("state")
            await wait_for(lambda: _text_is(state, "streaming"), within=15, what="state streaming")

            # Numbers move while events flow, without reloading the page.
            delivered = page.get_by_test_id("delivered")
            first = _number(await delivered.inner_text())
            await wait_for(
                lambda: _bigger(delivered, first), within=15, what="delivered count moving"
            )
            second = _number(await delivered.inner_text())
            await wait_for(
                lambda: _bigger(delivered, second), within=15, what="delivered count moving on"
            )
            await wait_for(
                lambda: _bigger(page.get_by_test_id("rate"), 0), within=15, what="rate above 0"
            )
            for name in ("orders-file", "audit-file"):
                line = page.locator(f'#chart-throughput polyline[data-series="{name}"]')
                await line.wait_for(timeout=10_000)
            row = page.locator('#destinations tr[data-destination="orders-file"]')
            # the configured sink type, not an internal wrapper's class name
            assert await row.locator("td").nth(1).inner_text() == "file"
            own = page.locator('#slots tr[data-slot="dash"]')
            await own.wait_for(timeout=10_000)
            assert "yes" in await own.inner_text()
            assert await page.get_by_test_id("parked").inner_text() == "0"
            assert await page.get_by_test_id("dead").inner_text() == "0"

            # An abandoned slot on the same cluster: the alert shows up live.
            execute(db, "select pg_create_logical_replication_slot('dash_orphan', 'pgoutput')")
            alert = page.locator('#alerts li[data-rule="slot_inactive"]')
            await alert.wait_for(timeout=15_000)
            text = await alert.inner_text()
            assert "slot dash_orphan" in text and "WARN" in text
            assert "pg_drop_replication_slot('dash_orphan')" in text
            await wait_for(
                lambda: _text_is(page.get_by_test_id("alert-count"), "1"),
                within=10,
                what="alert count",
            )
            await page.locator('#slots tr[data-slot="dash_orphan"]').wait_for(timeout=10_000)
            await asyncio.sleep(2.5)  # fill the charts a little more for the screenshot
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert problems == []
        finally:
            stop_writing.set()
            with contextlib.suppress(Exception):
                await writing
            await browser.close()


async def _text_is(locator: Locator, expected: str) -> bool:
    return (await locator.inner_text()).strip() == expected


async def _bigger(locator: Locator, than: float) -> bool:
    return _number(await locator.inner_text()) > than


async def test_dashboard_opens_with_history_and_shows_a_failing_destination(
    db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Charts are filled from the server's history at first load; a destination
    failing every event shows its real sink type, a growing lag (parked events
    count), an open alert, and the banner once its parked cap pauses replication."""
    _need_browser()
    from playwright.async_api import async_playwright

    from tests.integration.support import WebhookReceiver
    from walrelay.web import history

    monkeypatch.setattr(history, "SAMPLE_SECONDS", 0.2)  # 15 minutes in a few seconds
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("WALRELAY_TEST_HOOK_SECRET", "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    execute(db, "create table items (id bigserial primary key, v text)")
    hook = WebhookReceiver("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    hook.status = 500
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "slot": "dash_hist",
                "publication": "dash_hist_pub",
                "tables": ["public.items"],
                "status_interval": 1,
            },
            "destinations": [
                {"name": "orders", "sink": {"type": "file", "path": str(tmp_path / "a")}},
                {
                    "name": "hook",
                    "sink": {
                        "type": "webhook",
                        "url": hook.url,
                        "secret_env": "WALRELAY_TEST_HOOK_SECRET",
                    },
                    "parking": {
                        "park_after": 1,
                        "max_events": 1500,
                        "backoff": {"initial": 0.5, "max": 1},
                    },
                },
            ],
            "ledger": {"type": "none"},
            "shutdown_timeout": 5,
            "monitor": {
                "interval": "250ms",
                "thresholds": {
                    "delivery_lag_warn_seconds": "1s",
                    "delivery_lag_page_seconds": "1h",
                },
            },
            "http": {"port": 0, "token_env": "WALRELAY_TEST_TOKEN"},
        }
    )

    async with hook, running_engine(config) as engine, async_playwright() as pw:
        http = engine.services.http
        assert http is not None
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            for _ in range(60):  # a few seconds of traffic before the page is opened
                await conn.execute("insert into items (v) select 'x' from generate_series(1, 25)")
                await asyncio.sleep(0.05)  # a steady trickle of transactions
        orders = engine.destinations["orders"]
        await wait_for(lambda: orders.delivered_total >= 1500, within=20, what="orders delivered")
        await wait_for(lambda: len(http.history.points) >= 25, within=20, what="history")

        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1200})
            await context.add_cookies(
                [{"name": "walrelay_session", "value": _session(TOKEN), "url": http.url}]
            )
            page = await context.new_page()
            await page.goto(http.url)
            line = page.locator('#chart-throughput polyline[data-series="orders"]')
            await line.wait_for(timeout=10_000)
            # At first render: many points already, from the server (a poll adds one a second).
            points = (await line.get_attribute("points") or "").split()
            assert len(points) >= 15, points
            peak = await page.locator("#legend-throughput").inner_text()
            assert "orders" in peak

            row = page.locator('#destinations tr[data-destination="hook"]')
            await row.wait_for(timeout=10_000)
            assert await row.locator("td").nth(1).inner_text() == "webhook"
            lag_cell = row.locator("td").nth(5)
            first = _seconds(await lag_cell.inner_text())
            assert first > 0
            await wait_for(
                lambda: _lag_above(lag_cell, first + 1), within=15, what="hook's lag growing"
            )
            alert = page.locator('#alerts li[data-rule="delivery_lag"]')
            await alert.wait_for(timeout=15_000)
            assert "destination hook" in await alert.inner_text()
            # its parked events reach the cap: replication pauses, the banner says so
            banner = page.get_by_test_id("paused")
            await banner.wait_for(timeout=20_000)
            assert "parked events reached their cap" in await banner.inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-failing.png"), full_page=True)
        finally:
            await browser.close()


def _session(token: str) -> str:
    from walrelay.web.auth import session_value

    return session_value(token)


def _seconds(text: str) -> float:
    value, _, unit = text.strip().partition(" ")
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}.get(unit, 1.0)
    return float(value) * scale if value not in ("", "-") else 0.0


async def _lag_above(locator: Locator, than: float) -> bool:
    return _seconds(await locator.inner_text()) > than
