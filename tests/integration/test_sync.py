"""Two-way sync: no echo, exactly-once apply, whole transactions, start-up checks."""

from __future__ import annotations

import pytest

from tests.integration.sync_support import SyncEnv, assert_quiet, sync_clusters, sync_env
from tests.waiting import wait_for
from walrelay.errors import ConfigError

__all__ = ["sync_clusters", "sync_env"]


async def test_a_change_on_each_side_reaches_the_other_once_and_never_comes_back(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    runner = await env.start(env.settings())
    env.execute("a", "insert into items (id, v, n) values (1, 'from a', 1)")
    env.execute("b", "insert into items (id, v, n) values (2, 'from b', 1)")
    await wait_for(lambda: env.rows("a") == env.rows("b") != [], what="both rows on both nodes")
    assert len(env.rows("a")) == 2
    env.execute("b", "update items set n = n + 1 where id = 1")  # a's row, changed on b
    await wait_for(lambda: env.rows("a") == env.rows("b") == [(1, "from a", 2), (2, "from b", 1)])
    a_to_b = runner.directions[("a", "b")].stats
    b_to_a = runner.directions[("b", "a")].stats
    # Each applied transaction came back to the target's reader once, as an echo, and was dropped.
    await wait_for(
        lambda: runner.readers["b"].echoes_dropped == 1 and runner.readers["a"].echoes_dropped == 2,
        what="every applied transaction dropped once by its target's reader",
    )
    assert (a_to_b.transactions, b_to_a.transactions) == (1, 2)
    await assert_quiet(env, runner)
    assert (a_to_b.transactions, b_to_a.transactions) == (1, 2)
    assert (runner.readers["a"].echoes_dropped, runner.readers["b"].echoes_dropped) == (2, 1)
    assert not a_to_b.conflicts and not b_to_a.conflicts


async def test_restart_resumes_from_the_origin_progress_without_applying_twice(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    settings = env.settings()
    runner = await env.start(settings)
    for i in range(20):
        env.execute("a", "insert into items (id, v, n) values (%s, 'x', 0)", (i,))
    await wait_for(lambda: len(env.rows("b")) == 20, what="20 rows on b")
    await env.stop(runner)
    # Changes while walrelay is down: applied once after the restart.
    env.execute("a", "update items set n = n + 1 where id < 10")
    env.execute("b", "update items set n = n + 10 where id >= 10")
    runner = await env.start(settings)
    await wait_for(lambda: env.rows("a") == env.rows("b"), what="identical tables")
    rows = env.rows("a")
    assert [r[2] for r in rows] == [1] * 10 + [10] * 10
    await wait_for(
        lambda: (
            runner.directions[("a", "b")].stats.transactions == 1
            and runner.directions[("b", "a")].stats.transactions == 1
        ),
        what="one transaction applied per direction after the restart",
    )


async def test_a_transaction_is_applied_whole(sync_env: SyncEnv) -> None:
    env = sync_env
    runner = await env.start(env.settings())
    env.execute(
        "a",
        "insert into items (id, v, n) select g, 'bulk', g from generate_series(1, 500) g",
    )
    await wait_for(lambda: runner.directions[("a", "b")].stats.transactions == 1, what="applied")
    # One target transaction: every row carries the same xmin.
    assert env.execute("b", "select count(distinct xmin::text), count(*) from items") == [(1, 500)]


async def test_track_commit_timestamp_off_refuses_to_start(sync_env: SyncEnv, pg) -> None:
    env = sync_env
    settings = env.settings()
    dsns = dict(env.dsns)
    with __import__("psycopg").connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create database {env.name}_off")
    try:
        dsns["b"] = pg.dsn(f"{env.name}_off")
        from walrelay.sync.config import parse_sync_config

        bad = parse_sync_config(
            {
                "sync": {
                    "name": env.name,
                    "nodes": {"a": {"dsn": dsns["a"]}, "b": {"dsn": dsns["b"]}},
                    "tables": ["public.items"],
                }
            }
        )
        from walrelay.sync.runner import SyncRunner

        with pytest.raises(ConfigError, match="node b: track_commit_timestamp is off") as e:
            await SyncRunner(bad).prepare()
        assert e.value.exit_code == 2
        assert settings.name == env.name
    finally:
        with __import__("psycopg").connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database {env.name}_off with (force)")


@pytest.mark.parametrize(
    ("ddl_on_b", "message"),
    [
        ("drop table items", "node b: table public.items does not exist"),
        (
            "alter table items drop constraint items_pkey",
            "node b: table public.items has no primary key",
        ),
        (
            "alter table items alter column n type bigint",
            "node b: column public.items.n is bigint, on node a it is integer",
        ),
    ],
)
async def test_start_up_checks_name_node_table_and_column(
    sync_env: SyncEnv, ddl_on_b: str, message: str
) -> None:
    from walrelay.sync.runner import SyncRunner

    env = sync_env
    env.execute("b", ddl_on_b)
    with pytest.raises(ConfigError, match=message) as e:
        await SyncRunner(env.settings()).prepare()
    assert e.value.exit_code == 2
