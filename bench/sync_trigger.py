"""What the ``walrelay_sync_previous`` trigger costs a writer of a synced table.

One real cluster (track_commit_timestamp = on), one table, one connection
doing single-row autocommit updates (synchronous_commit = on, the slowest
shape for a writer): updates/s and WAL bytes per update without the sync's
triggers, then with them (the trigger looks the row up by key and logs a
logical message). Each phase runs --updates updates, best of --rounds.

    .venv/bin/python bench/sync_trigger.py [--updates 3000] [--rounds 3]

Prints the figures and writes JSON (default bench/results/sync_trigger.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from walrelay.state.sync import note_previous_function
from walrelay.testing.pgcluster import start_cluster


def phase(conn: psycopg.Connection[Any], updates: int, rounds: int) -> tuple[float, float]:
    best = 0.0
    wal = 0.0
    for _ in range(rounds):
        lsn0 = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        t0 = time.perf_counter()
        for i in range(updates):
            conn.execute("update t set v = v + 1 where id = %s", (i % 1000 + 1,))
        rate = updates / (time.perf_counter() - t0)
        row = conn.execute("select pg_current_wal_lsn() - %s::pg_lsn", (lsn0,)).fetchone()
        if rate > best:
            best, wal = rate, float(row[0]) / updates  # type: ignore[index]
    return best, wal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="bench/results/sync_trigger.json")
    args = ap.parse_args()
    cluster = start_cluster({"track_commit_timestamp": "on"})
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("create schema walrelay")
            conn.execute("create table t (id int primary key, v int not null)")
            conn.execute("insert into t select g, 0 from generate_series(1, 1000) g")
            without = phase(conn, args.updates, args.rounds)
            create, function = note_previous_function(
                sql.Identifier("walrelay"), "public.t", sql.Identifier("public", "t"), ["id"]
            )
            conn.execute(create)
            conn.execute(
                sql.SQL(
                    "create trigger walrelay_sync_previous before update or delete on t "
                    "for each row execute function {}()"
                ).format(function)
            )
            with_trigger = phase(conn, args.updates, args.rounds)
    finally:
        cluster.stop()
    result = {
        "updates": args.updates,
        "rounds": args.rounds,
        "without": {"updates_per_s": round(without[0]), "wal_bytes_per_update": without[1]},
        "with_trigger": {
            "updates_per_s": round(with_trigger[0]),
            "wal_bytes_per_update": with_trigger[1],
        },
    }
    print(f"{'':<14} {'updates/s':>10} {'WAL B/update':>13}")
    for name, (rate, wal) in (("without", without), ("with trigger", with_trigger)):
        print(f"{name:<14} {rate:>10.0f} {wal:>13.0f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
