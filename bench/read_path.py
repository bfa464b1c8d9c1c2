"""The read path alone, in process: pgoutput frames -> session -> Router -> buffer.

No server and no sink: synthetic XLogData frames of inserts into a table shaped
like bench/throughput.py's (bigint key, int, text, numeric, timestamptz) go
through the real :class:`~walrelay.engine.session.ReplicationSession`,
:class:`~walrelay.pipeline.router.Router` and destination buffer (drained after
every read, as a scheduler would). Prints the CPU microseconds per change: a
steadier figure than a whole run on a shared machine, for before/after
comparisons of the hot path.

    .venv/bin/python bench/read_path.py [--changes 200000] [--rows-per-tx 100]
        [--op insert|update|delete|mix] [--repeat 3] [--profile out.prof] [--ordered]
        [--json bench/results/read_path.json]

Instructions per change, steady on a loaded machine: run it under
``valgrind --tool=callgrind`` with ``--repeat 1`` and with ``--repeat 0``
(builds the frames only) and divide the difference by the changes. The LSN
tracker is never told of deliveries here, so on single-row transactions the
figure also carries its growing bookkeeping. ``--ordered``: the destination's
sink asks for exact id order, as the file sink does (an ordered buffer, not a
keyed one).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import struct
import time
from pathlib import Path

import walrelay.speedups
from walrelay.config import DestinationConfig, SourceConfig
from walrelay.engine.feedback import Feedback
from walrelay.engine.gc_tuning import tune_gc_for_streaming
from walrelay.engine.session import ReplicationSession, Resume
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.router import Router
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.stats import EngineStats
from walrelay.sinks.memory import MemorySink
from walrelay.source.types import TypeRegistry

OID = 16400
COLUMNS = [("id", 20, True), ("k", 23, False), ("v", 25, False), ("n", 1700, False)]
COLUMNS.append(("ts", 1184, False))
FRAMES_PER_READ = 64


def _xlog(payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQQ", 0, 0, 0) + payload


def _relation() -> bytes:
    out = b"R" + struct.pack("!I", OID) + b"public\0bench\0d" + struct.pack("!H", len(COLUMNS))
    for name, type_oid, key in COLUMNS:
        out += bytes([1 if key else 0]) + name.encode() + b"\0" + struct.pack("!Ii", type_oid, -1)
    return out


def _tuple(values: list[bytes | None]) -> bytes:
    out = struct.pack("!H", len(values))
    for v in values:
        out += b"n" if v is None else b"t" + struct.pack("!I", len(v)) + v
    return out


def _row(i: int) -> list[bytes | None]:
    return [
        str(i).encode(),
        str(i % 1000).encode(),
        f"batch {i // 100}".encode(),
        f"{i % 9999}.50".encode(),
        b"2026-12-07 16:21:35.123456+00",
    ]


def _change(op: str, i: int) -> bytes:
    head = struct.pack("!I", OID)
    if op == "insert":
        return b"I" + head + b"N" + _tuple(_row(i))
    if op == "update":
        return b"U" + head + b"N" + _tuple(_row(i))
    key: list[bytes | None] = [str(i).encode(), None, None, None, None]
    return b"D" + head + b"K" + _tuple(key)


def frames(changes: int, rows_per_tx: int, op: str) -> list[list[bytes]]:
    out = [_xlog(_relation())]
    ops = ["insert", "update", "delete"] if op == "mix" else [op]
    lsn = 0x1000000
    ts = 818_000_000_000_000
    for t in range(changes // rows_per_tx):
        out.append(_xlog(b"B" + struct.pack("!QqI", lsn, ts, 1000 + t)))
        for j in range(rows_per_tx):
            i = t * rows_per_tx + j
            out.append(_xlog(_change(ops[i % len(ops)], i)))
        out.append(_xlog(b"C" + struct.pack("!BQQq", 0, lsn, lsn + 8, ts)))
        lsn += 0x10000
    return [out[i : i + FRAMES_PER_READ] for i in range(0, len(out), FRAMES_PER_READ)]


class _Stream:
    """Hands out the frames, then stops the session."""

    def __init__(self, reads: list[list[bytes]], stop: asyncio.Event, dest: Destination) -> None:
        self._reads = iter(reads)
        self._stop = stop
        self._buffer = dest._buffer

    async def read_frames(self) -> list[bytes]:
        buffer = self._buffer
        batch = buffer.take(1 << 30)
        if batch:
            buffer.done(batch)
        nxt = next(self._reads, None)
        if nxt is None:
            self._stop.set()
            return []
        return nxt

    def send_status(self, lsn: int) -> None:
        pass

    async def close(self) -> None:
        pass


async def run(reads: list[list[bytes]], ordered: bool = False) -> None:
    dcfg = DestinationConfig.model_validate({"name": "file", "sink": {"type": "stdout"}})
    dest = Destination("file", MemorySink(ordered=ordered), max_buffer_bytes=1 << 30)
    tracker = LsnTracker()
    router = Router([dcfg], {"file": dest}, EnvelopeBuilder(TypeRegistry()), tracker)
    stop = asyncio.Event()
    source = SourceConfig.model_validate(
        {
            "dsn": "postgresql://x@localhost/x",
            "slot": "s",
            "publication": "p",
            "tables": ["public.bench"],
        }
    )
    feedback = Feedback(tracker, status_interval=10, trim_targets=list, oldest_parked=lambda: None)
    session = ReplicationSession(
        _Stream(reads, stop, dest),  # type: ignore[arg-type]
        source=source,
        router=router,
        tracker=tracker,
        feedback=feedback,
        stats=EngineStats(),
        backfills=_NoBackfills(),  # type: ignore[arg-type]
        heartbeat=None,
        heartbeat_prefix="walrelay.heartbeat",
        heartbeat_table=None,
        stop=stop,
        on_keepalive=lambda: None,
        resume=Resume(),
    )
    await session.run()


class _NoBackfills:
    watch: set[str] = set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--op", default="insert", choices=["insert", "update", "delete", "mix"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile")
    ap.add_argument("--ordered", action="store_true", help="an ordered sink, as the file sink")
    ap.add_argument("--json", default="bench/results/read_path.json")
    args = ap.parse_args()
    reads = frames(args.changes, args.rows_per_tx, args.op)
    tune_gc_for_streaming()  # as walrelay run does
    n = (args.changes // args.rows_per_tx) * args.rows_per_tx
    best = float("inf") if args.repeat else 0.0
    for _ in range(args.repeat):
        t0 = time.process_time()
        if args.profile:
            with cProfile.Profile() as prof:
                asyncio.run(run(reads, args.ordered))
            prof.dump_stats(args.profile)
        else:
            asyncio.run(run(reads, args.ordered))
        best = min(best, time.process_time() - t0)
    per_change = best / n * 1e6
    print(f"{args.op} x{n} ({args.rows_per_tx}/tx): {per_change:.2f} CPU us per change", end="")
    print(f" (best of {args.repeat})")
    if args.repeat:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "benchmark": "read_path",
                    "op": args.op,
                    "changes": n,
                    "rows_per_tx": args.rows_per_tx,
                    "ordered": args.ordered,
                    "best_of": args.repeat,
                    "cpu_us_per_change": round(per_change, 3),
                    "speedups": walrelay.speedups.ENABLED,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
