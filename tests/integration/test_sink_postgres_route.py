"""The PostgreSQL sink's target table from the ``route`` transform, and a
batch python function seeing the initial snapshot's rows in one call, end to
end against real source and target databases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.support import execute, make_config, running_engine, wait_for
from walrelay.testing.pgcluster import PgCluster, scratch_database

_counter = itertools.count(1)

BATCH_HOOK = """
import json, pathlib

CALLS = pathlib.Path({calls!r})


def stamp(events):
    with CALLS.open("a") as f:
        f.write(json.dumps(len(events)) + "\\n")
    for event in events:
        if event["record"] is not None:
            event["record"]["batch"] = len(events)
    return events
"""


@pytest.fixture
def target(pg: PgCluster) -> Iterator[str]:
    with scratch_database(pg, f"routed{next(_counter)}") as dsn:
        yield dsn


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


async def test_route_picks_the_target_table_and_a_batch_hook_gets_the_snapshot_whole(
    db: str, target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    module = "walrelay_test_batch_stamp"
    (tmp_path / f"{module}.py").write_text(BATCH_HOOK.format(calls=str(calls)))
    monkeypatch.syspath_prepend(str(tmp_path))
    execute(
        db,
        "create table orders (id int primary key, region text, v int)",
        "alter table orders replica identity full",  # a delete routes by its old row's region
        "create table items (id int primary key)",
        "insert into orders select g, case when g % 2 = 0 then 'EU' else 'us' end, 0"
        " from generate_series(1, 6) g",
    )
    table = "(id int primary key, region text, v int, batch int)"
    execute(
        target,
        "create schema shard",
        f'create table shard."orders_EU" {table}',  # a quoted name: case kept
        f"create table shard.orders_us {table}",
        "create table public.orders " + table,  # the unrouted default: must stay empty
        "create table public.items_copy (id int primary key)",
    )
    dest = {
        "name": "pg",
        "snapshot": "initial",
        "sink": {"type": "postgres", "dsn": target, "tables": {"items": "items_copy"}},
        "transforms": [
            {"python": {"function": f"{module}:stamp", "batch": True}},
            {"route": {"tables": ["orders"], "to": "shard.orders_{record.region}"}},
        ],
    }
    config = make_config(db, ["public.orders", "public.items"], [dest])
    async with running_engine(config) as engine:
        delivered = engine.destinations["pg"]
        await wait_for(lambda: delivered.delivered_total >= 6, what="the snapshot rows")
        execute(
            db,
            "insert into orders values (7, 'us', 0), (8, 'EU', 0)",
            "update orders set v = 1 where id in (2, 3)",
            "delete from orders where id = 4",
            "insert into items values (1)",
        )
        await wait_for(lambda: delivered.delivered_total >= 12, what="the streamed changes")
    eu = rows(target, 'select id, v, batch from shard."orders_EU" order by id')
    us = rows(target, "select id, v, batch from shard.orders_us order by id")
    assert eu == [(2, 1, 1), (6, 0, 6), (8, 0, 1)]
    assert us == [(1, 0, 6), (3, 1, 1), (5, 0, 6), (7, 0, 1)]
    assert rows(target, "select count(*) from public.orders") == [(0,)]
    assert rows(target, "select id from public.items_copy") == [(1,)]
    # Exactly once: each event recorded in the transaction that applied it.
    assert rows(target, "select count(*) from walrelay.applied_events") == [(12,)]
    # The snapshot's six rows in one call; streamed changes one at a time.
    sizes = [int(line) for line in calls.read_text().split()]
    assert sizes[0] == 6 and set(sizes[1:]) == {1}
