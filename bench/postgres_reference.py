"""The PostgreSQL sink cases of bench/brokers.py: the target and the references.

The target is a second PostgreSQL cluster (the test defaults of
walrelay.testing.pgcluster), holding ``public.bench`` shaped like the
source's, which walrelay's sink fills. Each reference writes the same rows
(the ``record`` of every envelope the file sink wrote, parsed before the
clock starts) into an empty table of the same shape with plain psycopg, in
transactions of the sink's ``batch_size`` (500) with ``synchronous_commit =
on`` (what the sink sets on its sessions), on as many connections at once as
the sink uses (ordered: 1; unordered: ``max_connections``, 4):

- ``executemany``: ``insert .. on conflict (id) do update`` (the sink's
  upsert), pipelined (psycopg pipeline mode);
- ``COPY``: ``copy .. from stdin`` (plain inserts: the workload only inserts).

The sink does more per transaction than either: it records the events' ids
in ``walrelay.applied_events`` (its exactly-once claim) and casts the rows
from their JSON records on the server (``jsonb_populate_recordset``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from broker_references import Payload
from walrelay.testing.pgcluster import PgCluster, start_cluster

BATCH = 500  # PostgresSinkConfig.batch_size
CONNECTIONS = 4  # PostgresSinkConfig.max_connections (unordered)
COLUMNS = ("id", "k", "v", "n", "ts")
DDL = (
    "create table {} (id bigint primary key, k int not null, v text not null, "
    "n numeric(12,2) not null, ts timestamptz not null)"
)


class Target:
    """A second cluster holding the sink's target table, as a context manager."""

    def __init__(self) -> None:
        self._cluster: PgCluster | None = None

    @property
    def cluster(self) -> PgCluster:
        assert self._cluster is not None
        return self._cluster

    @property
    def pid(self) -> int:
        return self.cluster.pid

    def dsn(self) -> str:
        return self.cluster.dsn()

    def __enter__(self) -> Target:
        self._cluster = start_cluster()
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(DDL.format("bench"))
        return self

    def __exit__(self, *_: Any) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.stop()


def sink(ordered: bool) -> Callable[[Target, Path], dict[str, Any]]:
    def config(server: Target, _: Path) -> dict[str, Any]:
        return {"type": "postgres", "dsn": server.dsn(), "ordered": ordered}

    return config


def count(server: Target, _: Path) -> int:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("select count(*) from bench").fetchone()
        # Every transaction of the database so far: the sink's, a few of its set-up,
        # this count's (the statistics lag by up to a second).
        commits = conn.execute(
            "select xact_commit from pg_stat_database where datname = current_database()"
        ).fetchone()
    assert row is not None and commits is not None
    print(f"  the target has {row[0]:,} rows and ~{commits[0]:,} transactions", flush=True)
    return int(row[0])


def _rows(payloads: Sequence[Payload]) -> list[tuple[Any, ...]]:
    """Each envelope's record, in column order (values as the envelope has them:
    numeric and timestamptz as text, which PostgreSQL parses)."""
    out = []
    for p in payloads:
        record = json.loads(p.body)["record"]
        out.append(tuple(record[c] for c in COLUMNS))
    return out


def _chunks(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


async def _run(
    server: Target,
    table: str,
    connections: int,
    rows: list[tuple[Any, ...]],
    write: Callable[[psycopg.AsyncConnection[Any], list[tuple[Any, ...]]], Any],
) -> float:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(DDL.format(table))
    conns = [
        await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True)
        for _ in range(connections)
    ]
    try:
        for conn in conns:
            await conn.execute("set synchronous_commit = on")
        todo = iter(_chunks(rows))

        async def worker(conn: psycopg.AsyncConnection[Any]) -> None:
            for chunk in todo:
                async with conn.transaction():
                    await write(conn, chunk)

        t0 = time.monotonic()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.monotonic() - t0
        got = await (await conns[0].execute(f"select count(*) from {table}")).fetchone()
        if got is None or got[0] != len(rows):
            raise RuntimeError(f"postgres reference {table}: {got} rows of {len(rows)}")
        return elapsed
    finally:
        for conn in conns:
            await conn.close()


def executemany(ordered: bool) -> Callable[[Target, Sequence[Payload]], float]:
    """Upserts by ``executemany`` in pipeline mode, a transaction per ``BATCH`` rows."""
    table = f"ref_exec_{'ordered' if ordered else 'unordered'}"
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
    query = (
        f"insert into {table} ({', '.join(COLUMNS)}) values (%s, %s, %s, %s, %s) "
        f"on conflict (id) do update set {updates}"
    )

    async def write(conn: psycopg.AsyncConnection[Any], chunk: list[tuple[Any, ...]]) -> None:
        async with conn.pipeline():
            await conn.cursor().executemany(query, chunk)

    def run(server: Target, payloads: Sequence[Payload]) -> float:
        rows = _rows(payloads)
        return asyncio.run(_run(server, table, 1 if ordered else CONNECTIONS, rows, write))

    return run


def copy(ordered: bool) -> Callable[[Target, Sequence[Payload]], float]:
    """``COPY .. FROM STDIN``, a transaction per ``BATCH`` rows."""
    table = f"ref_copy_{'ordered' if ordered else 'unordered'}"
    statement = f"copy {table} ({', '.join(COLUMNS)}) from stdin"

    async def write(conn: psycopg.AsyncConnection[Any], chunk: list[tuple[Any, ...]]) -> None:
        async with conn.cursor().copy(statement) as cp:
            for row in chunk:
                await cp.write_row(row)

    def run(server: Target, payloads: Sequence[Payload]) -> float:
        rows = _rows(payloads)
        return asyncio.run(_run(server, table, 1 if ordered else CONNECTIONS, rows, write))

    return run
