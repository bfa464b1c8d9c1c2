"""Two-way sync tests: clusters with commit timestamps, a database per test on
each, and a :class:`SyncRunner` run in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from walrelay.sync.config import SyncSettings, parse_sync_config
from walrelay.sync.runner import SyncRunner
from walrelay.testing.pgcluster import PgCluster, drop_database, start_cluster

SYNC_SETTINGS = {"track_commit_timestamp": "on", "wal_sender_timeout": "20s"}
NODES = ("a", "b", "c")
_counter = itertools.count(1)

TABLE_DDL = (
    "create table public.items (id int primary key, v text, n int, "
    "updated timestamptz default now())"
)


_CLUSTERS: dict[str, PgCluster] = {}


@pytest.fixture(scope="session")
def sync_clusters() -> Iterator[dict[str, PgCluster]]:
    """Three clusters with track_commit_timestamp = on (a restart-time setting).

    Each test module imports this fixture, which makes it one fixture per
    module: the clusters are started once (kept in ``_CLUSTERS``) and stopped
    by whichever module's instance is torn down first, at the end of the session."""
    if not _CLUSTERS:
        with ThreadPoolExecutor(len(NODES)) as pool:
            futures = {name: pool.submit(start_cluster, SYNC_SETTINGS) for name in NODES}
            for name, future in futures.items():
                _CLUSTERS[name] = future.result()
    try:
        yield _CLUSTERS
    finally:
        with ThreadPoolExecutor(len(NODES)) as pool:
            list(pool.map(lambda c: c.stop(), _CLUSTERS.values()))


@dataclass
class SyncEnv:
    name: str
    dsns: dict[str, str]
    clusters: dict[str, PgCluster]
    runners: list[tuple[SyncRunner, asyncio.Task[None]]] = field(default_factory=list)

    def settings(self, nodes: tuple[str, ...] = ("a", "b"), **extra: Any) -> SyncSettings:
        prio = {"a": 1, "b": 2, "c": 3}
        sync: dict[str, Any] = {
            "name": self.name,
            "nodes": {n: {"dsn": self.dsns[n], "priority": prio[n]} for n in nodes},
            "tables": ["public.items"],
            "status_interval": 0.5,
            "reconnect": {"initial": 0.1, "max": 0.5},
        }
        sync.update(extra)
        return parse_sync_config({"sync": sync})

    def write_config(self, path: Path, **extra: Any) -> Path:
        """A sync.yaml for nodes a and b, as a user writes it (for the CLI)."""
        nodes = {n: {"dsn": self.dsns[n], "priority": p} for n, p in (("a", 1), ("b", 2))}
        sync = {"name": self.name, "nodes": nodes, "tables": ["public.items"], **extra}
        path.write_text(yaml.safe_dump({"sync": sync}))
        return path

    async def start(self, settings: SyncSettings, initial: str | None = None) -> SyncRunner:
        runner = SyncRunner(settings)
        task = asyncio.create_task(runner.run(initial))
        ready = asyncio.create_task(runner.ready.wait())
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
        self.runners.append((runner, task))
        await wait_connected(runner)
        return runner

    async def stop(self, runner: SyncRunner) -> None:
        for r, task in list(self.runners):
            if r is runner:
                r.stop()
                await asyncio.wait_for(task, 30)
                self.runners.remove((r, task))

    def execute(
        self, node: str, query: str | sql.Composed, params: Any = None
    ) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsns[node], autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def rows(self, node: str, table: str = "public.items") -> list[tuple[Any, ...]]:
        return self.execute(node, f"select id, v, n from {table} order by id")


async def wait_connected(runner: SyncRunner) -> None:
    from tests.waiting import wait_for

    await wait_for(
        lambda: (
            all(d.attached for d in runner.directions.values())
            and all(r.connected for r in runner.readers.values())
        ),
        what="every direction and reader connected",
    )


async def _make_env(
    clusters: dict[str, PgCluster], nodes: tuple[str, ...]
) -> AsyncIterator[SyncEnv]:
    n = next(_counter)
    dbname = f"sync{n}"
    dsns = {}
    for node in nodes:
        cluster = clusters[node]
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"create database {dbname}")
        with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
            conn.execute(TABLE_DDL)
        dsns[node] = cluster.dsn(dbname)
    env = SyncEnv(f"t{n}", dsns, clusters)
    try:
        yield env
    finally:
        for runner, task in env.runners:
            runner.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        for node in nodes:
            cluster = clusters[node]
            if not cluster.running():
                continue
            await asyncio.to_thread(drop_database, cluster.dsn(), dbname)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                # Origins are cluster-wide, and each one with progress holds one of
                # max_replication_slots' state slots until it is dropped.
                prefix = f"walrelay_sync_{env.name}_"
                for (origin,) in conn.execute("select roname from pg_replication_origin"):
                    if origin.startswith(prefix):
                        conn.execute("select pg_replication_origin_drop(%s)", (origin,))


@pytest.fixture
async def sync_env(sync_clusters: dict[str, PgCluster]) -> AsyncIterator[SyncEnv]:
    """Nodes a and b: a fresh database on each with ``public.items``."""
    async for env in _make_env(sync_clusters, ("a", "b")):
        yield env


@pytest.fixture
async def sync_env3(sync_clusters: dict[str, PgCluster]) -> AsyncIterator[SyncEnv]:
    """Nodes a, b and c."""
    async for env in _make_env(sync_clusters, NODES):
        yield env


def counter(runner: SyncRunner) -> Callable[[], int]:
    return lambda: sum(d.stats.transactions for d in runner.directions.values())


async def assert_quiet(env: SyncEnv, runner: SyncRunner) -> None:
    """Everything written so far is applied, and then nothing more happens: no echo.

    A probe (a non-transactional logical message) on every node marks the WAL;
    once every direction has passed the first probes, every earlier change is
    applied. Then no row version of a synced table, and no conflict record, may
    change on any node until every direction has passed a second round of
    probes: an echo of anything applied before would have been applied again in
    between. (Row versions of this database, not ``pg_last_committed_xact``:
    that is cluster-wide and also moves when autovacuum analyzes a catalog.)"""
    await _past_probes(env, runner)
    nodes = list(runner.readers)
    tables = [*runner.settings.tables, f"{runner.settings.state_schema}.conflicts"]
    before = {n: _row_versions(env, n, tables) for n in nodes}
    await _past_probes(env, runner)
    after = {n: _row_versions(env, n, tables) for n in nodes}
    changed = {
        (n, t): (before[n][t], after[n][t])
        for n in nodes
        for t in tables
        if before[n][t] != after[n][t]
    }
    assert not changed, f"rows changed after the last change (an echo): {changed}"


def _row_versions(env: SyncEnv, node: str, tables: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Each row's (ctid, xmin) per table: any insert, update or delete changes it."""
    return {
        t: env.execute(
            node,
            sql.SQL("select ctid::text, xmin::text from {} order by 1").format(
                sql.Identifier(*t.split("."))
            ),
        )
        for t in tables
    }


async def _past_probes(env: SyncEnv, runner: SyncRunner) -> None:
    from tests.waiting import wait_for
    from walrelay.model import parse_lsn

    probes = {
        n: parse_lsn(
            env.execute(n, "select pg_logical_emit_message(false, 'probe', '')::text")[0][0]
        )
        for n in runner.readers
    }
    await wait_for(
        lambda: all(d.applied_end >= probes[src] for (src, _), d in runner.directions.items()),
        what="every direction past the probes",
    )
