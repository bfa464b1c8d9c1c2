"""What the dedup ledger costs per event, without any broker.

A destination (the real scheduler) delivers ``--events`` events into a sink
that only waits ``--send-ms`` per batch, once behind a :class:`LedgerHook`
on a real PostgreSQL / Redis and once with no ledger; the difference in this
process's CPU time, per event, is the ledger's CPU per event. Two shapes:
``webhook`` (batches of 1, 32 in flight) and ``kafka`` (batches of 500, 8 in
flight, as Kafka at_least_once).

    .venv/bin/python bench/ledger.py [--events 20000] [--only postgres,webhook]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from walrelay.model import Event
from walrelay.pipeline.ledger import Ledger, LedgerHook, PostgresLedger, RedisLedger
from walrelay.pipeline.scheduler import Destination
from walrelay.testing.pgcluster import start_cluster
from walrelay.testing.servers import RedisServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SHAPES = {"webhook": (1, 32), "kafka": (500, 4000)}  # batch size, events in flight


class WaitingSink:
    """Takes every batch after ``delay`` seconds."""

    ordered = False
    transactional = False

    def __init__(self, batch_size: int, delay: float) -> None:
        self.batch_size = batch_size
        self.delay = delay
        self.count = 0

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def deliver(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(self.delay)
        self.count += len(events)


def events(n: int, base: int) -> list[Event]:
    # Half single-row transactions, half 100-row ones (bench/throughput.py's mix).
    out: list[Event] = []
    lsn = base
    while len(out) < n:
        rows = 1 if (lsn // 16) % 2 else 100
        out.extend(
            Event(lsn, s, "insert", "public.t", (f"k{lsn}-{s}",), b"{}", 1, T0)
            for s in range(min(rows, n - len(out)))
        )
        lsn += 16 * 1024
    return out


async def run(
    ledger: Ledger | None, shape: str, n: int, delay: float, base: int
) -> dict[str, float]:
    batch_size, in_flight = SHAPES[shape]
    sink = WaitingSink(batch_size, delay)
    # As the relay has it (sole writer of its ledger keys).
    hook = (
        LedgerHook(ledger, f"bench-{shape}-{base}", sole_writer=True)
        if ledger is not None
        else None
    )
    dest = Destination(
        "bench", sink, max_in_flight=in_flight, hooks=[hook] if hook is not None else []
    )
    if hook is not None:
        await hook.open()
    batch = events(n, base)
    cpu0, t0 = time.process_time(), time.monotonic()
    dest.start()
    for e in batch:
        if not dest.try_put(e):
            await dest.put(e)
    await dest.drain()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    await dest.stop()
    calls = 0
    if hook is not None:
        calls = hook.ledger_calls
        await hook.close()
    assert sink.count == n
    return {"cpu": cpu, "wall": wall, "calls": calls}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--send-ms", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated: postgres, redis, webhook, kafka")
    args = ap.parse_args()
    wanted = [w for w in args.only.split(",") if w]

    def want(name: str, among: Iterable[str]) -> bool:
        """Named in --only, or none of its kind is."""
        return name in wanted or not any(other in wanted for other in among)

    cluster = start_cluster()
    try:
        with RedisServer() as redis:
            backends = {
                "postgres": lambda: PostgresLedger(cluster.dsn(), schema="walrelay"),
                "redis": lambda: RedisLedger(redis.url),
            }
            print(
                f"{'ledger':10} {'shape':8} {'events':>7} {'ledger cpu us/ev':>16}"
                f" {'round trips':>11} {'wall s':>7} {'no-ledger wall s':>16}"
            )
            base = 1 << 32
            for shape in SHAPES:
                if not want(shape, SHAPES):
                    continue
                bare = asyncio.run(run(None, shape, args.events, args.send_ms / 1000, base))
                for name, make in backends.items():
                    if not want(name, backends):
                        continue
                    base += 1 << 32
                    r = asyncio.run(run(make(), shape, args.events, args.send_ms / 1000, base))
                    per_event = (r["cpu"] - bare["cpu"]) / args.events * 1e6
                    print(
                        f"{name:10} {shape:8} {args.events:>7} {per_event:>16.1f}"
                        f" {r['calls']:>11.0f} {r['wall']:>7.2f}"
                        f" {bare['wall']:>16.2f}",
                        flush=True,
                    )
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
