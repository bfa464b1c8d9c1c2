"""Two-way sync of three nodes (full mesh), a node down and back, initial copy."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.sync_support import SyncEnv, assert_quiet, sync_clusters, sync_env3
from tests.waiting import wait_for
from walrelay.errors import ConfigError
from walrelay.sync.runner import SyncRunner

__all__ = ["sync_clusters", "sync_env3"]

ALL = ("a", "b", "c")


def agree(env: SyncEnv, nodes: tuple[str, ...] = ALL) -> bool:
    first = env.rows(nodes[0])
    return all(env.rows(n) == first for n in nodes[1:])


async def test_three_nodes_each_change_reaches_every_other_node_once(sync_env3: SyncEnv) -> None:
    env = sync_env3
    runner = await env.start(env.settings(ALL))
    for i, node in enumerate(ALL):
        env.execute(node, "insert into items (id, v, n) values (%s, %s, 0)", (i, node))
    await wait_for(lambda: agree(env) and len(env.rows("a")) == 3, what="3 rows everywhere")
    env.execute("c", "update items set n = 7 where id = 0")
    await wait_for(lambda: agree(env) and env.rows("b")[0][2] == 7, what="c's update everywhere")
    await assert_quiet(env, runner)
    # Each direction applied exactly the changes made on its source node.
    applied = {f"{s}->{t}": d.stats.transactions for (s, t), d in runner.directions.items()}
    assert applied == {"a->b": 1, "a->c": 1, "b->a": 1, "b->c": 1, "c->a": 2, "c->b": 2}
    # Every applied transaction was dropped once, by its target's reader.
    assert {n: r.echoes_dropped for n, r in runner.readers.items()} == {"a": 3, "b": 3, "c": 2}


async def test_a_node_down_the_others_go_on_and_it_catches_up(sync_env3: SyncEnv) -> None:
    env = sync_env3
    runner = await env.start(env.settings(ALL))
    env.execute("a", "insert into items (id, v, n) select g, 'a', 0 from generate_series(1, 10) g")
    await wait_for(lambda: agree(env) and len(env.rows("c")) == 10, what="rows everywhere")
    c = env.clusters["c"]
    await asyncio.to_thread(c.stop, remove=False)
    try:
        env.execute("a", "update items set n = 1 where id <= 5")
        env.execute("b", "update items set n = 2 where id > 5")
        env.execute("b", "insert into items values (11, 'b', 0)")
        await wait_for(lambda: agree(env, ("a", "b")) and len(env.rows("a")) == 11, what="a, b")
        assert not runner.directions[("a", "c")].attached
    finally:
        await asyncio.to_thread(c.restart)
    await wait_for(lambda: agree(env), within=60, what="c caught up")
    assert [r[2] for r in env.rows("c")] == [1] * 5 + [2] * 5 + [0]
    env.execute("c", "delete from items where id = 11")
    await wait_for(lambda: agree(env) and len(env.rows("a")) == 10, what="c's delete everywhere")
    await assert_quiet(env, runner)


async def test_initial_copy_from_one_node_then_both_ways(sync_env3: SyncEnv) -> None:
    env = sync_env3
    env.execute("a", "insert into items (id, v, n) select g, 'a', g from generate_series(1, 300) g")
    env.execute("b", "insert into items values (999, 'stale on b', 0)")
    runner = await env.start(env.settings(ALL), initial="a")
    assert agree(env) and len(env.rows("b")) == 300  # copied before streaming starts
    env.execute("b", "update items set v = 'b' where id = 1")
    env.execute("a", "insert into items values (301, 'a', 0)")
    await wait_for(lambda: agree(env) and len(env.rows("c")) == 301, what="both ways after copy")
    assert env.rows("c")[0] == (1, "b", 1)
    await assert_quiet(env, runner)
    # The copy was not streamed again, and came back to no one.
    assert runner.directions[("a", "b")].stats.transactions == 1
    await env.stop(runner)
    with pytest.raises(ConfigError, match="already has the slot"):
        await SyncRunner(env.settings(ALL)).prepare("a")
