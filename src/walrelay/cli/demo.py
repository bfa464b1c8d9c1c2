"""``walrelay demo``: a throwaway cluster, a sample workload, a live stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from pathlib import Path

import psycopg

from walrelay.config import parse_config
from walrelay.engine import Engine
from walrelay.errors import WalrelayError
from walrelay.model import format_lsn, parse_lsn
from walrelay.testing.pgcluster import PgCluster, start_cluster

SCHEMA = """
create table customers (
    id serial primary key,
    name text not null,
    email text not null,
    tier text not null default 'free',
    updated_at timestamptz not null default now()
);
create table orders (
    id bigserial primary key,
    customer_id int not null references customers(id),
    amount numeric(12, 2) not null,
    status text not null,
    items jsonb not null,
    created_at timestamptz not null default now()
);
"""

TIERS = ("free", "pro", "enterprise")
STATUSES = ("new", "paid", "shipped", "cancelled")


def run_workload(dsn: str, transactions: int, seed: int = 7) -> str:
    """A mix of single-row and 100-row transactions. Returns the LSN after it."""
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        customers = 0
        for i in range(transactions):
            kind = rng.random()
            with conn.transaction():
                if customers < 50 or kind < 0.15:
                    customers += 1
                    conn.execute(
                        "insert into customers (name, email) values (%s, %s)",
                        (f"customer {customers}", f"c{customers}@example.com"),
                    )
                elif kind < 0.35:
                    conn.execute(
                        "update customers set tier = %s, updated_at = now() where id = %s",
                        (rng.choice(TIERS), rng.randint(1, customers)),
                    )
                elif kind < 0.40:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "insert into orders (customer_id, amount, status, items) "
                            "values (%s, %s, 'new', %s)",
                            [
                                (
                                    rng.randint(1, customers),
                                    f"{rng.randint(100, 99999) / 100:.2f}",
                                    json.dumps([{"sku": f"sku-{j}", "qty": 1 + j % 3}]),
                                )
                                for j in range(100)
                            ],
                        )
                elif kind < 0.47:
                    conn.execute(
                        "delete from orders where id = (select min(id) from orders "
                        "where status = 'cancelled')"
                    )
                else:
                    conn.execute(
                        "insert into orders (customer_id, amount, status, items) "
                        "values (%s, %s, %s, %s)",
                        (
                            rng.randint(1, customers),
                            f"{rng.randint(100, 99999) / 100:.2f}",
                            rng.choice(STATUSES),
                            json.dumps([{"sku": f"sku-{i % 40}", "qty": 1}]),
                        ),
                    )
        row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])


async def _progress(engine: Engine, started: float, done: asyncio.Event) -> None:
    last_n, last_t = 0, time.monotonic()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=0.5)
        now = time.monotonic()
        delivered = sum(d.delivered_total for d in engine.destinations.values())
        rate = (delivered - last_n) / max(now - last_t, 1e-6)
        last_n, last_t = delivered, now
        lag = engine.stats.last_delivery_lag
        lag_txt = f"{lag * 1000:6.0f} ms" if lag is not None else "     - ms"
        sys.stderr.write(
            f"\r[{now - started:5.1f}s] events in {engine.stats.events_in:8d}  "
            f"delivered {delivered:8d}  {rate:9.0f} ev/s  lag {lag_txt}  "
            f"confirmed {format_lsn(engine.confirmed_lsn)}   "
        )
        sys.stderr.flush()
    sys.stderr.write("\n")


async def _demo(cluster: PgCluster, transactions: int, output: str, quiet: bool) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    # A file left by an earlier demo holds ids of another cluster's history; the
    # file sink would take them as already delivered.
    Path(output).unlink(missing_ok=True)  # noqa: ASYNC240 - once, at start-up
    destinations: list[dict[str, object]] = [
        {"name": "file", "sink": {"type": "file", "path": output, "fsync": "batch"}}
    ]
    if not quiet:
        destinations.append(
            {"name": "stdout", "tables": ["public.customers"], "sink": {"type": "stdout"}}
        )
    config = parse_config(
        {
            "source": {
                "dsn": cluster.dsn(),
                "slot": "walrelay_demo",
                "publication": "walrelay_demo_pub",
                "tables": ["public.customers", "public.orders"],
                "status_interval": 1,
            },
            "destinations": destinations,
            "shutdown_timeout": 10,
        },
        "(demo)",
    )
    engine = Engine(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, engine.request_stop)
    engine_task = asyncio.create_task(engine.run())
    started_wait = asyncio.create_task(engine.started.wait())
    await asyncio.wait({engine_task, started_wait}, return_when=asyncio.FIRST_COMPLETED)
    if engine_task.done():
        started_wait.cancel()
        engine_task.result()
        return 1
    sys.stderr.write(
        f"walrelay demo: PostgreSQL {cluster.port} (pid {cluster.pid}); "
        f"{transactions} transactions -> {output}"
        f"{'' if quiet else ' and stdout (customers)'}\n"
    )
    t0 = time.monotonic()
    done = asyncio.Event()
    progress = asyncio.create_task(_progress(engine, t0, done))
    workload = asyncio.create_task(asyncio.to_thread(run_workload, cluster.dsn(), transactions))
    await asyncio.wait({workload, engine_task}, return_when=asyncio.FIRST_COMPLETED)
    if workload.done() and not engine.stopping:
        target = parse_lsn(workload.result())
        # The workload is done: wait until every change of it is delivered.
        while engine.confirmed_lsn < target and not engine_task.done() and not engine.stopping:
            await asyncio.wait({engine_task}, timeout=0.1)
    engine.request_stop()
    await engine_task
    done.set()
    await progress
    elapsed = time.monotonic() - t0
    delivered = {name: d.delivered_total for name, d in engine.destinations.items()}
    lines = await asyncio.to_thread(_count_lines, output)
    sys.stderr.write(
        f"walrelay demo: {engine.stats.events_in} events from "
        f"{engine.stats.transactions_in} transactions in {elapsed:.1f}s; delivered "
        + ", ".join(f"{n}={c}" for n, c in delivered.items())
        + f"; {output} has {lines} lines; slot confirmed at {format_lsn(engine.confirmed_lsn)}\n"
    )
    if not workload.done():
        workload.cancel()
    return 0


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run_demo(*, transactions: int, output: str, quiet: bool) -> int:
    cluster = start_cluster({"logical_decoding_work_mem": "64kB"})
    try:
        return asyncio.run(_demo(cluster, transactions, output, quiet))
    except WalrelayError as e:
        sys.stderr.write(f"walrelay: error: {e}\n")
        return e.exit_code
    finally:
        cluster.stop()
        sys.stderr.write(f"walrelay demo: PostgreSQL (pid {cluster.pid}) stopped and removed\n")
