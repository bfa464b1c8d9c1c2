"""Two-way sync conflicts: each kind detected, resolved by each policy, logged.

The conflicting writes are made while walrelay is stopped, in a known time
order, then walrelay starts and both directions meet them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from tests.integration.sync_support import SyncEnv, assert_quiet, sync_clusters, sync_env
from tests.waiting import wait_for
from walrelay.cli.main import main
from walrelay.sync.metrics import SyncCollector

__all__ = ["sync_clusters", "sync_env"]

POLICY_TABLES = {
    "public.t_priority": "priority",
    "public.t_keep": "keep_local",
    "public.t_apply": "apply_remote",
    "public.t_python": "python:tests.integration.sync_policies:add_up",
}


def conflicts(env: SyncEnv, node: str, table: str = "public.items") -> dict[int, tuple[str, str]]:
    rows = env.execute(
        node,
        "select (key->>'id')::int, conflict, resolution from walrelay.conflicts "
        "where table_name = %s order by id",
        (table,),
    )
    return {k: (c, r) for k, c, r in rows}


async def settle(env: SyncEnv, nodes: tuple[str, ...] = ("a", "b"), **extra: Any) -> None:
    """Start walrelay, wait until the nodes agree on every table and nothing moves."""
    runner = await env.start(env.settings(nodes, **extra))
    await assert_quiet(env, runner)
    await env.stop(runner)


async def test_each_conflict_kind_under_last_write_wins(sync_env: SyncEnv) -> None:
    env = sync_env
    settings = env.settings()
    runner = await env.start(settings)
    env.execute(
        "a", "insert into items (id, v, n) select g, 'base', 0 from generate_series(2, 5) g"
    )
    await wait_for(lambda: len(env.rows("b")) == 4, what="base rows on b")
    await env.stop(runner)
    # Each line is later than the one before it (commit times on one machine).
    env.execute("a", "insert into items values (1, 'a', 1)")  # insert_exists both ways
    env.execute("b", "insert into items values (1, 'b', 1)")  #   b's is newer: b wins
    env.execute("b", "update items set v = 'b' where id = 2")  # update_origin_differs
    env.execute("a", "update items set v = 'a' where id = 2")  #   on a; a's is newer
    env.execute("b", "update items set v = 'b' where id = 3")  # update_deleted on a: the
    env.execute("a", "delete from items where id = 3")  #           delete is newer, it wins
    env.execute("a", "delete from items where id = 4")  # update_missing on a: the update
    env.execute("b", "update items set v = 'b' where id = 4")  # is newer: row back
    env.execute("a", "delete from items where id = 5")  # delete_missing both ways
    env.execute("b", "delete from items where id = 5")
    runner = await env.start(settings)
    await wait_for(lambda: env.rows("a") == env.rows("b"), what="identical tables")
    assert env.rows("a") == [(1, "b", 1), (2, "a", 0), (4, "b", 0)]
    await wait_for(lambda: 5 in conflicts(env, "a") and 5 in conflicts(env, "b"), what="logged")
    assert conflicts(env, "a") == {
        1: ("insert_exists", "apply_remote"),
        2: ("update_origin_differs", "keep_local"),
        3: ("update_deleted", "keep_local"),
        4: ("update_missing", "apply_remote"),
        5: ("delete_missing", "skip"),
    }
    # a's update of 2 and delete of 3 replaced the base version, not b's newer
    # one: concurrent writes, detected on b too (a's are newer: applied).
    assert conflicts(env, "b") == {
        1: ("insert_exists", "keep_local"),
        2: ("update_origin_differs", "apply_remote"),
        3: ("delete_origin_differs", "apply_remote"),
        4: ("delete_origin_differs", "keep_local"),
        5: ("delete_missing", "skip"),
    }
    counts = runner.directions[("b", "a")].stats.conflicts
    # The counters move when the applier resumes after its commit, which the
    # rows above may be read before.
    await wait_for(lambda: counts.total() == 5, what="b->a counted its conflicts")
    assert counts == {
        "insert_exists": 1,
        "update_origin_differs": 1,
        "update_deleted": 1,
        "update_missing": 1,
        "delete_missing": 1,
    }
    # The same counts in the Prometheus metrics.
    families = {m.name: m for m in SyncCollector(runner).collect()}
    metric = {
        (s.labels["direction"], s.labels["conflict"]): s.value
        for s in families["walrelay_sync_conflicts"].samples
        if s.name.endswith("_total")
    }
    assert metric[("b->a", "update_deleted")] == 1 and metric[("a->b", "insert_exists")] == 1
    # The log holds both versions, their origins and commit times.
    local_row, local_origin, remote_row, remote_origin, lt, rt = env.execute(
        "a",
        "select local_row, local_origin, remote_row, remote_origin, local_committed_at, "
        'remote_committed_at from walrelay.conflicts where key = \'{"id": "2"}\'',
    )[0]
    assert (local_row["v"], local_origin, remote_row["v"], remote_origin) == ("a", "a", "b", "b")
    assert lt > rt


def test_sync_conflicts_and_status_commands(sync_env: SyncEnv, tmp_path: Path) -> None:
    env = sync_env
    asyncio.run(_two_inserts_of_one_key(env))
    config = env.write_config(tmp_path / "sync.yaml")
    cli = CliRunner()
    out = cli.invoke(
        main, ["sync", "conflicts", "--config", str(config), "--json", "--table", "items"]
    )
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert sorted((r["node"], r["conflict"], r["resolution"]) for r in lines) == [
        ("a", "insert_exists", "apply_remote"),
        ("b", "insert_exists", "keep_local"),
    ]
    text = cli.invoke(main, ["sync", "conflicts", "--config", str(config), "--node", "a"]).output
    assert "insert_exists  -> apply_remote" in text and "remote b at" in text
    status = cli.invoke(main, ["sync", "status", "--config", str(config), "--json"])
    assert status.exit_code == 0, status.output
    rows = {r["direction"]: r for r in map(json.loads, status.output.splitlines())}
    assert rows["a->b"]["conflicts"] == {"insert_exists": 1}
    assert rows["b->a"]["applied_lsn"] is not None
    assert "warning" not in status.stderr
    # Sequences are not synced: overlapping ranges on two nodes are flagged.
    for node in ("a", "b"):
        env.execute(node, "alter table items add column serial_no bigserial")
    status = cli.invoke(main, ["sync", "status", "--config", str(config)])
    assert "warning: public.items.serial_no: sequences items_serial_no_seq on node a" in (
        status.stderr
    )
    env.execute("a", "alter sequence items_serial_no_seq increment by 2 start with 1 restart")
    env.execute("b", "alter sequence items_serial_no_seq increment by 2 start with 2 restart")
    status = cli.invoke(main, ["sync", "status", "--config", str(config)])
    assert "warning" not in status.stderr, status.stderr
    config.write_text("sync: {name: x}\n")
    bad = cli.invoke(main, ["sync", "--config", str(config)])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1, bad.output


async def _two_inserts_of_one_key(env: SyncEnv) -> None:
    await settle(env)  # creates the slots
    env.execute("a", "insert into items values (1, 'a', 1)")
    env.execute("b", "insert into items values (1, 'b', 1)")
    await settle(env)


async def test_delete_versus_update_converges_whichever_comes_last(sync_env: SyncEnv) -> None:
    env = sync_env
    settings = env.settings()
    runner = await env.start(settings)
    env.execute("a", "insert into items values (1, 'x', 0), (2, 'x', 0)")
    await wait_for(lambda: len(env.rows("b")) == 2, what="rows on b")
    await env.stop(runner)
    env.execute("b", "update items set v = 'updated' where id = 1")
    env.execute("a", "delete from items where id = 1")  # delete after update: deleted
    env.execute("a", "delete from items where id = 2")
    env.execute("b", "update items set v = 'updated' where id = 2")  # update after: kept
    await settle(env)
    assert env.rows("a") == env.rows("b") == [(2, "updated", 0)]


async def test_each_policy_on_an_insert_of_the_same_key(sync_env: SyncEnv) -> None:
    env = sync_env
    for table in POLICY_TABLES:
        for node in ("a", "b"):
            env.execute(node, f"create table {table} (id int primary key, v text, n int)")
    tables = ["public.items", *POLICY_TABLES]
    await settle(env, tables=tables, conflicts={"tables": POLICY_TABLES})  # creates the slots
    for table in POLICY_TABLES:  # a first, b later: b's version is the newer one
        env.execute("a", f"insert into {table} values (1, 'a', 1)")
    for table in POLICY_TABLES:
        env.execute("b", f"insert into {table} values (1, 'b', 2)")
    await settle(env, tables=tables, conflicts={"tables": POLICY_TABLES})

    def both(table: str) -> tuple[list[Any], list[Any]]:
        return env.rows("a", table), env.rows("b", table)

    # priority: a (1) beats b (2) although b's write is newer.
    assert both("public.t_priority") == ([(1, "a", 1)], [(1, "a", 1)])
    # keep_local: each node keeps its own (they differ: the policy's meaning).
    assert both("public.t_keep") == ([(1, "a", 1)], [(1, "b", 2)])
    # apply_remote: each takes the other's (they swap: why it is not a default).
    assert both("public.t_apply") == ([(1, "b", 2)], [(1, "a", 1)])
    # python: the function's row, the same on both nodes.
    assert both("public.t_python") == ([(1, "sum", 3)], [(1, "sum", 3)])
    assert conflicts(env, "a", "public.t_python") == {1: ("insert_exists", "custom_row")}
    assert conflicts(env, "b", "public.t_priority") == {1: ("insert_exists", "apply_remote")}


async def test_a_tie_in_commit_time_goes_to_the_lower_priority_number(sync_env: SyncEnv) -> None:
    env = sync_env
    await settle(env)  # creates the slots
    # Both nodes write the same key with the same commit time: a replication
    # origin's session (not one of this sync's) sets the commit timestamp.
    for node in ("a", "b"):
        env.execute(
            node,
            "select pg_replication_origin_create('tie_test') where not exists "
            "(select 1 from pg_replication_origin where roname = 'tie_test')",
        )
        with __import__("psycopg").connect(env.dsns[node], autocommit=True) as conn:
            conn.execute("select pg_replication_origin_session_setup('tie_test')")
            with conn.transaction():
                conn.execute(
                    "select pg_replication_origin_xact_setup('0/1', '2030-01-01 00:00:00+00')"
                )
                conn.execute("insert into items values (1, %s, 0)", (node,))
            conn.execute("select pg_replication_origin_session_reset()")
    assert env.execute(
        "a", "select (pg_xact_commit_timestamp(xmin))::text from items"
    ) == env.execute("b", "select (pg_xact_commit_timestamp(xmin))::text from items")
    await settle(env)
    # a has priority 1, b 2: a's version on both (never "remote wins", which swaps).
    assert env.rows("a") == env.rows("b") == [(1, "a", 0)]
    assert conflicts(env, "b") == {1: ("insert_exists", "apply_remote")}
    assert conflicts(env, "a") == {1: ("insert_exists", "keep_local")}


async def test_priority_converges_when_the_lower_priority_write_is_newer(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    settings = env.settings(conflicts={"default": "priority"})
    runner = await env.start(settings)
    env.execute(
        "a", "insert into items (id, v, n) select g, 'base', 0 from generate_series(1, 3) g"
    )
    await wait_for(lambda: len(env.rows("b")) == 3, what="base rows on b")
    env.execute("a", "update items set v = 'a' where id = 3")  # b sees it, then writes:
    await wait_for(lambda: (3, "a", 0) in env.rows("b"), what="a's update of 3 on b")
    await env.stop(runner)
    # Concurrent, b (priority 2) always the later writer: a (priority 1) wins both.
    env.execute("a", "update items set v = 'a' where id = 1")
    env.execute("b", "update items set v = 'b' where id = 1")
    env.execute("a", "update items set v = 'a' where id = 2")
    env.execute("b", "delete from items where id = 2")
    # Not concurrent: b's write replaced a's version, so it is an ordinary update.
    env.execute("b", "update items set v = 'b' where id = 3")
    await settle(env, conflicts={"default": "priority"})
    assert env.rows("a") == env.rows("b") == [(1, "a", 0), (2, "a", 0), (3, "b", 0)]
    assert conflicts(env, "a") == {
        1: ("update_origin_differs", "keep_local"),
        2: ("delete_origin_differs", "keep_local"),
    }
    assert conflicts(env, "b") == {
        1: ("update_origin_differs", "apply_remote"),
        2: ("update_deleted", "apply_remote"),
    }


async def test_a_local_write_the_applier_waited_for_is_judged_by_its_own_commit_time(
    sync_env: SyncEnv,
) -> None:
    """The applier's read of the local row waits for a local transaction that
    holds the row, and must then judge the version that transaction committed
    (newer than the change being applied), not the one it replaced."""
    env = sync_env
    runner = await env.start(env.settings())
    env.execute("a", "insert into items (id, v, n) values (1, 'base', 0)")
    await wait_for(lambda: env.rows("b") == [(1, "base", 0)], what="the base row on b")
    with psycopg.connect(env.dsns["b"]) as late:  # a local writer on b
        late.execute("update items set v = 'b, committed last' where id = 1")  # holds the row
        env.execute("a", "update items set v = 'a' where id = 1")  # commits first
        await wait_for(
            lambda: (
                env.execute(
                    "b",
                    "select count(*) from pg_stat_activity "
                    "where application_name = 'walrelay-sync-a->b' and wait_event_type = 'Lock'",
                )
                == [(1,)]
            ),
            what="a->b waiting for the local transaction's row lock",
        )
        late.commit()  # the newest write: last write wins, on both nodes
    await wait_for(
        lambda: env.rows("a") == env.rows("b") == [(1, "b, committed last", 0)],
        what="both nodes on b's later write",
    )
    await assert_quiet(env, runner)
    assert conflicts(env, "b") == {1: ("update_origin_differs", "keep_local")}
