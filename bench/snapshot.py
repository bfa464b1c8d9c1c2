"""Initial snapshot throughput: rows/s into the file sink and the PostgreSQL sink.

A table of narrow rows is created with generate_series; walrelay starts on a
new slot (``snapshot: initial``) and the clock runs from the engine's start to
the last row being in the destination (file lines / target table count).

    .venv/bin/python bench/snapshot.py [--rows 500000] [--json bench/results/snapshot.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from walrelay.config import parse_config
from walrelay.engine import Engine
from walrelay.testing.pgcluster import PgCluster, start_cluster


def setup(cluster: PgCluster, rows: int) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("create database target")
        conn.execute(
            "create table bench (id bigint primary key, k int not null, v text not null, "
            "ts timestamptz not null default now())"
        )
        conn.execute(
            f"insert into bench (id, k, v) select g, g % 1000, 'value ' || g "
            f"from generate_series(1, {rows}) g"
        )
        conn.execute("analyze bench")
    with psycopg.connect(cluster.dsn("target"), autocommit=True) as conn:
        conn.execute(
            "create table bench (id bigint primary key, k int not null, v text not null, "
            "ts timestamptz not null)"
        )


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _target_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select count(*) from bench").fetchone()
        return int(row[0]) if row else 0


async def run_one(
    cluster: PgCluster, sink: dict[str, Any], slot: str, rows: int, done: Any
) -> float:
    config = parse_config(
        {
            "source": {
                "dsn": cluster.dsn(),
                "tables": ["bench"],
                "slot": slot,
                "publication": f"{slot}_pub",
            },
            "destinations": [{"name": "d", "sink": sink}],
            "http": {"enabled": False},
            "monitor": {"enabled": False},
            "heartbeat": {"enabled": False},
        },
        "(bench)",
    )
    engine = Engine(config)
    t0 = time.monotonic()
    task = asyncio.create_task(engine.run())
    try:
        while not await asyncio.to_thread(done):
            if task.done():
                task.result()
                raise RuntimeError("engine stopped")
            await asyncio.sleep(0.2)  # polling the destination
        return time.monotonic() - t0
    finally:
        engine.request_stop()
        await asyncio.wait_for(task, 60)


async def main_async(rows: int) -> dict[str, Any]:
    cluster = start_cluster()
    results: dict[str, Any] = {}
    try:
        setup(cluster, rows)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "events.jsonl"
            secs = await run_one(
                cluster,
                {"type": "file", "path": str(out)},
                "snap_file",
                rows,
                lambda: _count_lines(out) >= rows,
            )
            results["file"] = {
                "rows": rows,
                "seconds": round(secs, 2),
                "rows_per_second": round(rows / secs),
            }
        target = cluster.dsn("target")
        secs = await run_one(
            cluster,
            {"type": "postgres", "dsn": target},
            "snap_pg",
            rows,
            lambda: _target_count(target) >= rows,
        )
        results["postgres"] = {
            "rows": rows,
            "seconds": round(secs, 2),
            "rows_per_second": round(rows / secs),
        }
    finally:
        cluster.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--json", default="bench/results/snapshot.json")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.rows))
    print(f"{'sink':<10} {'rows':>10} {'seconds':>9} {'rows/s':>10}")
    for sink, r in results.items():
        print(f"{sink:<10} {r['rows']:>10} {r['seconds']:>9} {r['rows_per_second']:>10}")
    doc = {
        "benchmark": "initial snapshot",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
