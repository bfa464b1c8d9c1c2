"""Cost of reading event bodies back with every json number exact, in process.

Per body kind -- the 5-column ``bench`` table of ``bench/transforms.py`` (no
json column), a jsonb column with ordinary numbers, one with numbers a double
cannot hold -- the microseconds per event of ``orjson.loads`` and of
``walrelay.exact_json.loads``; and the per-event cost of ``format: debezium``,
``format: cloudevents`` and a ``rename`` chain on the typical events, as the
Router runs them (the chain knows the table's column types).

    .venv/bin/python bench/json_numbers.py [--events 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transforms import BENCH, CATALOG, events
from walrelay import exact_json
from walrelay.config import DestinationConfig
from walrelay.format_config import CloudEventsOptions, DebeziumOptions
from walrelay.model import Begin, Change, Column, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.formats import CloudEventsFormatter, DebeziumFormatter
from walrelay.pipeline.transforms import build_chain
from walrelay.source.types import TypeRegistry

DOCS = Relation(
    2,
    "public",
    "docs",
    "d",
    (Column("id", 20, -1, True), Column("k", 23, -1, False), Column("doc", 3802, -1, False)),
)
SMALL = b'{"a": %d, "price": 12.5, "tags": ["x", "y"], "ok": true}'
BIG = b'{"a": %d, "big": 12345678901234567890123, "dec": 0.1000000000000000000000001}'


def doc_bodies(n: int, doc: bytes) -> list[bytes]:
    builder = EnvelopeBuilder(TypeRegistry())
    begin = Begin(xid=1, commit_lsn=0x1000, committed_at=datetime(2024, 1, 2, tzinfo=UTC))
    return [
        builder.build(
            begin, Change(op="insert", relation=DOCS, new=(b"%d" % i, b"3", doc % i)), i
        ).body
        for i in range(n)
    ]


def per_event(fn: Callable[[Any], Any], items: list[Any]) -> float:
    """Microseconds of CPU per item, best of 3 (CPU time: the machine is shared)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return round(best / len(items) * 1e6, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--json", default="bench/results/json_numbers.json")
    args = ap.parse_args()
    n = args.events
    typical = events(n)
    kinds = {
        "typical": [e.body for e in typical],
        "jsonb_small_numbers": doc_bodies(n, SMALL),
        "jsonb_big_numbers": doc_bodies(n, BIG),
    }
    results: dict[str, Any] = {}
    print(f"{'body':<22}{'orjson.loads':>14}{'exact_json.loads':>18}  (us/event)")
    for name, bodies in kinds.items():
        fast, exact = per_event(orjson.loads, bodies), per_event(exact_json.loads, bodies)
        results[name] = {"orjson_loads": fast, "exact_json_loads": exact}
        print(f"{name:<22}{fast:>14.2f}{exact:>18.2f}")
    dbz = DebeziumFormatter(
        DebeziumOptions(), name="b", db="d", version="v", relation=lambda _t: BENCH
    )
    dbz_plain = DebeziumFormatter(
        DebeziumOptions(),
        name="b",
        db="d",
        version="v",
        relation=lambda _t: BENCH,
        transformed=False,
    )
    ce = CloudEventsFormatter(CloudEventsOptions(), slot="s")
    dcfg = DestinationConfig.model_validate(
        {
            "name": "b",
            "sink": {"type": "stdout"},
            "transforms": [{"rename": {"columns": {"k": "kind"}}}],
        }
    )
    chain = build_chain(dcfg, CATALOG)
    assert chain is not None
    chain.relation = {"public.bench": BENCH}.get
    paths = {
        "debezium (no transforms)": lambda e: dbz_plain.render(e, "false"),
        "debezium (after transforms)": lambda e: dbz.render(e, "false"),
        "cloudevents": lambda e: ce.render(e, "false"),
        "rename chain": chain.apply,
    }
    print(f"{'typical events through':<30}{'us/event':>10}")
    for name, fn in paths.items():
        results[name] = per_event(fn, typical)
        print(f"{name:<30}{results[name]:>10.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"benchmark": "json_numbers", "events": n, **results}, indent=2)
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
