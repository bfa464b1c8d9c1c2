"""Two-way sync start-up while nodes come and go: a node that is down, or that
goes away in the middle of start-up, is waited for; the sync never exits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from tests.integration.support import dsn_port, dsn_with_port
from tests.integration.sync_support import SyncEnv, assert_quiet, sync_clusters, sync_env3
from tests.waiting import wait_for
from walrelay.errors import ConfigError
from walrelay.sync.catalog import inspect_node
from walrelay.sync.config import SyncSettings
from walrelay.sync.runner import SyncRunner
from walrelay.testing.proxy import TcpProxy

__all__ = ["sync_clusters", "sync_env3"]


def through(settings: SyncSettings, node: str, proxy: TcpProxy) -> SyncSettings:
    """``settings`` with ``node`` reached through ``proxy``."""
    cfg = settings.nodes[node]
    proxied = cfg.model_copy(update={"dsn": SecretStr(dsn_with_port(cfg.dsn_value, proxy.port))})
    return settings.model_copy(update={"nodes": {**settings.nodes, node: proxied}})


async def test_a_node_lost_during_start_up_is_waited_for_and_catches_up(
    sync_env3: SyncEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = sync_env3
    nodes = ("a", "b", "c")
    await env.stop(await env.start(env.settings(nodes)))  # a first run prepares every node
    env.execute("a", "insert into items (id, v, n) values (1, 'a', 1)")
    env.execute("c", "insert into items (id, v, n) values (2, 'c', 1)")
    async with TcpProxy(dsn_port(env.dsns["c"])) as proxy:
        inspected: list[str] = []

        async def server_goes_away_while_c_is_inspected(conn: Any, node: str, *a: Any) -> Any:
            inspected.append(node)
            if node == "c" and inspected.count("c") == 1:
                proxy.cut()  # c's server goes away in the middle of start-up
            return await inspect_node(conn, node, *a)

        monkeypatch.setattr(
            "walrelay.sync.runner.inspect_node", server_goes_away_while_c_is_inspected
        )
        runner = SyncRunner(through(env.settings(nodes), "c", proxy))
        task = asyncio.create_task(runner.run())
        env.runners.append((runner, task))
        with caplog.at_level(logging.WARNING, logger="walrelay.sync"):
            await wait_for(lambda: runner.ready.is_set() or task.done(), what="start-up")
        assert not task.done(), task.exception() if task.done() else None
        assert any("node c went away during start-up" in r.getMessage() for r in caplog.records)
        # a and b sync meanwhile; c is waited for, not dropped.
        await wait_for(lambda: [r[0] for r in env.rows("b")] == [1], what="a's row on b")
        assert not runner.readers["c"].connected
        proxy.restore()
        await wait_for(
            lambda: env.rows("a") == env.rows("b") == env.rows("c") and len(env.rows("a")) == 2,
            what="c's row everywhere and a's on c",
        )
        await assert_quiet(env, runner)
        await env.stop(runner)


async def test_a_sync_with_one_reachable_node_waits_for_a_second(
    sync_env3: SyncEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = sync_env3
    nodes = ("a", "b")
    await env.stop(await env.start(env.settings(nodes)))  # a first run prepares both
    env.execute("b", "insert into items (id, v, n) values (1, 'b', 1)")
    async with TcpProxy(dsn_port(env.dsns["b"])) as proxy:
        proxy.cut()
        runner = SyncRunner(through(env.settings(nodes), "b", proxy))
        task = asyncio.create_task(runner.run())
        env.runners.append((runner, task))
        with caplog.at_level(logging.WARNING, logger="walrelay.sync"):
            await wait_for(
                lambda: (
                    sum("only 1 of 2 nodes are reachable" in r.getMessage() for r in caplog.records)
                    >= 2
                    or task.done()
                ),
                what="two attempts to reach a second node",
            )
        assert not task.done(), task.exception() if task.done() else None
        assert not runner.ready.is_set()
        proxy.restore()
        await wait_for(lambda: env.rows("a") == env.rows("b") != [], what="b's row on a")
        await env.stop(runner)


async def test_a_node_refused_for_good_stops_start_up_with_one_line(sync_env3: SyncEnv) -> None:
    """A wrong database name (or password, or pg_hba) is no outage: no retrying."""
    env = sync_env3
    settings = env.settings(("a", "b"))
    cfg = settings.nodes["b"]
    wrong = cfg.model_copy(
        update={"dsn": SecretStr(make_conninfo(cfg.dsn_value, dbname="no_such_db"))}
    )
    runner = SyncRunner(settings.model_copy(update={"nodes": {**settings.nodes, "b": wrong}}))
    with pytest.raises(ConfigError) as refused:
        await asyncio.wait_for(runner.run(), 30)
    assert "node b" in str(refused.value) and "no_such_db" in str(refused.value)
    assert "correct node b's dsn" in str(refused.value)


async def test_a_node_never_set_up_is_set_up_when_it_comes(sync_env3: SyncEnv) -> None:
    """A node down since before the first run gets its slot when it answers; then
    it takes part like the others (what it wrote before that is not synced)."""
    env = sync_env3
    async with TcpProxy(dsn_port(env.dsns["c"])) as proxy:
        proxy.cut()
        runner = SyncRunner(through(env.settings(("a", "b", "c")), "c", proxy))
        task = asyncio.create_task(runner.run())
        env.runners.append((runner, task))
        await wait_for(lambda: runner.ready.is_set() or task.done(), what="start-up")
        assert not task.done(), task.exception() if task.done() else None
        env.execute("a", "insert into items (id, v, n) values (1, 'a', 1)")
        await wait_for(lambda: [r[0] for r in env.rows("b")] == [1], what="a's row on b")
        assert not runner.prepared["c"].is_set()
        assert env.execute(
            "c", "select count(*) from pg_replication_slots where database = current_database()"
        ) == [(0,)]
        proxy.restore()
        await wait_for(lambda: runner.prepared["c"].is_set(), within=60, what="c set up")
        env.execute("c", "insert into items (id, v, n) values (2, 'c', 1)")
        await wait_for(
            lambda: env.rows("a") == env.rows("b") == env.rows("c") and len(env.rows("a")) == 2,
            within=60,
            what="a's row on c and c's row on a and b",
        )
        await assert_quiet(env, runner)
        await env.stop(runner)
