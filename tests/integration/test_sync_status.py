"""A running ``walrelay sync`` serves /healthz, /metrics, /api/status and the
dashboard as ``walrelay run`` does, with each direction's lag (bytes and
seconds), applied counts and conflicts by kind; ``walrelay status --config
sync.yaml`` renders them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from click.testing import CliRunner

from tests.integration.sync_support import SyncEnv, sync_clusters, sync_env
from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, _need_browser
from tests.integration.test_sync_conflicts import settle
from tests.waiting import wait_for
from walrelay.cli.main import main
from walrelay.testing.pgcluster import free_port

__all__ = ["sync_clusters", "sync_env"]

TOKEN = "sync-status-token-9c2f"
PRIORITIES = (("a", 1), ("b", 2))


async def test_sync_serves_lag_and_conflicts_to_status_metrics_and_dashboard(
    sync_env: SyncEnv, tmp_path: Path
) -> None:
    env = sync_env
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    http = {"port": free_port(), "token_file": str(token_file)}
    config = env.write_config(tmp_path / "sync.yaml", http=http)
    await settle(env)  # creates the slots
    env.execute("a", "insert into items values (1, 'a', 1), (2, 'x', 0)")
    env.execute("b", "insert into items values (1, 'b', 1)")  # insert_exists both ways
    runner = await env.start(env.settings(http=http))
    await wait_for(lambda: env.rows("a") == env.rows("b") and len(env.rows("a")) == 2, what="sync")
    base = f"http://127.0.0.1:{http['port']}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as client:

        async def status() -> dict[str, Any]:
            async with client.get(f"{base}/api/status", headers=auth) as resp:
                assert resp.status == 200
                doc: dict[str, Any] = await resp.json()
                return {d["direction"]: d for d in doc["sync"]["directions"]}

        async with client.get(f"{base}/api/status") as resp:
            assert resp.status == 401  # the token rules of walrelay run
        async with client.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "running"

        async def counted() -> bool:  # the counters move when each applier resumes
            dirs = await status()
            return all(dirs[d]["conflicts"] for d in ("a->b", "b->a"))

        await wait_for(counted, what="both directions counted their conflict")
        dirs = await status()
        assert dirs["a->b"]["conflicts"] == {"insert_exists": 1}
        assert dirs["b->a"]["conflicts"] == {"insert_exists": 1}
        assert dirs["a->b"]["applied_transactions"] == 1 and dirs["a->b"]["applied_changes"] == 2

        # A row lock on b holds the direction a->b: it falls behind in bytes and seconds.
        with psycopg.connect(env.dsns["b"]) as blocker:
            blocker.execute("select * from items where id = 2 for update")
            env.execute("a", "update items set v = 'late' where id = 2")

            async def behind() -> bool:
                d = (await status())["a->b"]
                return bool(d["lag_bytes"]) and d["lag_seconds"] > 0.3

            await wait_for(behind, what="a->b behind while b's row is locked")
            assert (await status())["b->a"]["lag_seconds"] == 0
            async with client.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
            lag = [
                line
                for line in metrics.splitlines()
                if line.startswith('walrelay_sync_lag_bytes{direction="a->b"}')
            ]
            assert lag and float(lag[0].split()[-1]) > 0
            assert (
                'walrelay_sync_conflicts_total{conflict="insert_exists",direction="a->b"} 1.0'
                in (metrics)
            )
            # walrelay status renders the running sync's document.
            out = await asyncio.to_thread(
                CliRunner().invoke, main, ["status", "--config", str(config)]
            )
            assert out.exit_code == 0, out.output
            line = next(x for x in out.output.splitlines() if x.strip().startswith("a->b"))
            assert "connected" in line and "insert_exists 1" in line
            blocker.rollback()

        async def caught_up() -> bool:
            d = (await status())["a->b"]
            return d["lag_bytes"] == 0 and d["lag_seconds"] == 0 and d["applied_transactions"] == 2

        await wait_for(caught_up, what="a->b caught up once the lock is gone")
        out = await asyncio.to_thread(
            CliRunner().invoke, main, ["status", "--config", str(config), "--json"]
        )
        assert json.loads(out.output)["sync"]["name"] == env.name

    # The dashboard shows the directions and their conflicts.
    _need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(base)
            await page.fill("#token", TOKEN)
            await page.click("#login")
            row = page.locator('#sync tr[data-direction="b->a"]')
            await row.wait_for(timeout=15_000)
            text = await row.inner_text()
            assert "insert_exists 1" in text and "connected" in text
        finally:
            await browser.close()
    await env.stop(runner)
