"""The scheduler's own CPU per event: a destination delivering into a sink
that does nothing but yield once to the event loop per batch.

What an unordered sink pays around its own work (buffer, batches, delivery
tasks, hooks), without any broker: with one event per batch and 32 in
flight it is the webhook sink's shape.

    .venv/bin/python bench/scheduler.py [--events 50000] [--batch-size 1]
        [--max-in-flight 32] [--runs 3] [--json bench/results/scheduler.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from walrelay.model import Event
from walrelay.pipeline.hooks import FailpointHook
from walrelay.pipeline.scheduler import Destination

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class YieldingSink:
    """Takes every batch after one round of the event loop."""

    ordered = False
    transactional = True

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.count = 0

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def deliver(self, events: Sequence[Event]) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(done.set_result, None)
        await done
        self.count += len(events)


async def run(n: int, batch_size: int, max_in_flight: int) -> float:
    """CPU seconds per event, from the first put to the drain."""
    sink = YieldingSink(batch_size)
    dest = Destination("bench", sink, max_in_flight=max_in_flight, hooks=[FailpointHook()])
    dest.start()
    events = [
        Event(1000 + i // 10, i % 10, "insert", "public.t", (f"k{i}",), b"{}", 1, T0)
        for i in range(n)
    ]
    cpu0 = time.process_time()
    for event in events:
        if not dest.try_put(event):
            await dest.put(event)
    if not await dest.drain(timeout=600):
        raise RuntimeError("the destination did not drain")
    cpu = time.process_time() - cpu0
    await dest.stop()
    if sink.count != n:
        raise RuntimeError(f"delivered {sink.count} of {n}")
    return cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-in-flight", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default="bench/results/scheduler.json")
    args = ap.parse_args()
    per_event = [
        asyncio.run(run(args.events, args.batch_size, args.max_in_flight)) for _ in range(args.runs)
    ]
    print(f"{'events':>8}{'batch':>7}{'in flight':>11}{'cpu us/event (min / max)':>28}")
    low, high = min(per_event) * 1e6, max(per_event) * 1e6
    print(
        f"{args.events:>8}{args.batch_size:>7}{args.max_in_flight:>11}"
        f"{f'{low:.1f} / {high:.1f}':>28}"
    )
    result = {
        "benchmark": "scheduler",
        "events": args.events,
        "batch_size": args.batch_size,
        "max_in_flight": args.max_in_flight,
        "cpu_us_per_event": [round(x * 1e6, 2) for x in per_event],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
