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
            assert "FileSink" in await row.inner_text()
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
