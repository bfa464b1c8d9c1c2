"""Cost per event of the transforms, in process (no database, no sink).

Builds ``read``/``update`` events of the 5-column ``bench`` table of
``bench/throughput.py`` with the real envelope builder and times each
destination chain's ``apply`` on them: no transforms (the Router's zero-cost
path: the event passes as built), the typical chain (filter + exclude +
rename + hash), a Python hook returning its input, a batch hook (one event
per call as on the stream, and ``--chunk`` events per call through
``apply_many`` as an initial snapshot chunk), and each step alone.

    .venv/bin/python bench/transforms.py [--events 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from walrelay.config import DestinationConfig
from walrelay.model import Begin, Change, Column, Event, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.transforms import build_chain
from walrelay.source.types import TypeRegistry

BENCH = Relation(
    oid=1,
    schema="public",
    name="bench",
    replica_identity="d",
    columns=(
        Column("id", 20, -1, True),
        Column("k", 23, -1, False),
        Column("v", 25, -1, False),
        Column("n", 1700, -1, False),
        Column("ts", 1184, -1, False),
    ),
)
CATALOG = {"public.bench": ("id", "k", "v", "n", "ts")}
CHAINS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "typical_chain": [
        {"filter": "record.id >= 0"},
        {"exclude": ["ts"]},
        {"rename": {"columns": {"k": "kind"}}},
        {"hash": {"columns": ["v"], "key_env": "BENCH_HASH_KEY"}},
    ],
    "python_hook": [{"python": "bench_identity_hook:identity"}],
    "python_batch_one": [{"python": {"function": "bench_identity_hook:many", "batch": True}}],
    "filter": [{"filter": "record.k % 2 == 0 || op == 'delete'"}],
    "exclude": [{"exclude": ["ts"]}],
    "rename": [{"rename": {"columns": {"k": "kind"}}}],
    "mask": [{"mask": {"columns": ["v"], "with": "***"}}],
    "hash": [{"hash": {"columns": ["v"], "key_env": "BENCH_HASH_KEY"}}],
    "cast": [{"cast": {"columns": {"n": "number", "ts": "epoch_ms"}}}],
    "key": [{"key": ["k"]}],
    "route": [{"route": "bench.{record.k}"}],
    "flatten": [{"flatten": {"fields": ["op", "table"]}}],
}


def events(n: int) -> list[Event]:
    builder = EnvelopeBuilder(TypeRegistry())
    begin = Begin(xid=1, commit_lsn=0x1000, committed_at=datetime(2024, 1, 2, tzinfo=UTC))
    out = []
    for i in range(n):
        row = (
            str(i).encode(),
            str(i % 97).encode(),
            b"value-%d" % i,
            b"12.50",
            b"2024-01-02 03:04:05.123456+00",
        )
        out.append(builder.build(begin, Change(op="insert", relation=BENCH, new=row), i))
    return out


CHUNKED = {"python_batch_chunk": CHAINS["python_batch_one"]}
"""Chains timed through ``apply_many`` over chunks (the initial snapshot's path)."""


def time_chain(steps: list[dict[str, Any]], sample: list[Event], chunk: int = 0) -> float:
    """Microseconds per event (best of 3); ``chunk``: events per ``apply_many``."""
    dcfg = DestinationConfig.model_validate(
        {"name": "bench", "sink": {"type": "stdout"}, "transforms": steps}
    )
    chain = build_chain(dcfg, CATALOG)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        if chain is None:
            for _ in sample:
                pass  # the Router hands the built event on as it is
        elif chunk:
            for i in range(0, len(sample), chunk):
                chain.apply_many(sample[i : i + chunk])
        else:
            apply = chain.apply
            for e in sample:
                apply(e)
        best = min(best, time.perf_counter() - t0)
    return best / len(sample) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--chunk", type=int, default=500, help="events per batch call")
    ap.add_argument("--json", default="bench/results/transforms.json")
    args = ap.parse_args()
    os.environ.setdefault("BENCH_HASH_KEY", "bench-secret")
    hook = types.ModuleType("bench_identity_hook")
    exec("def identity(event):\n    return event\n", hook.__dict__)
    exec("def many(events):\n    return events\n", hook.__dict__)
    sys.modules["bench_identity_hook"] = hook
    sample = events(args.events)
    results = {name: round(time_chain(steps, sample), 2) for name, steps in CHAINS.items()}
    for name, steps in CHUNKED.items():
        results[name] = round(time_chain(steps, sample, args.chunk), 2)
    print(f"{'chain':<20}{'us/event':>10}")
    for name, us in results.items():
        print(f"{name:<20}{us:>10.2f}")
    out = {
        "benchmark": "transforms",
        "events": args.events,
        "chunk": args.chunk,
        "us_per_event": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
