"""Scale-out: events/s through 1, 2, 4, 8 `walrelay worker` processes.

One Kafka broker (KRaft, walrelay.testing.servers), one topic of
``--partitions`` partitions, and a webhook receiver in this process that
counts distinct event ids. For each worker count N: N worker processes join
a fresh consumer group on the empty topic; once the group is stable (every
partition assigned), ``--events`` relay-shaped records are written the way
the relay's kafka sink writes them (walrelay envelope, canonical-JSON key,
``murmur2_random`` partitioner, ``id``/``op``/``table`` headers) and the
clock runs until the receiver has every id. The relay itself is left out:
it is one process whatever N is, and its cost (measured by
bench/throughput.py) would only add a constant.

Cases:

``webhook``
    the receiver answers after a fixed ``--latency`` (20 ms); each worker
    has ``max_in_flight`` = ``--in-flight`` (8). One worker's ceiling is
    in_flight / latency = 400 events/s; N workers, N times that -- until the
    machine's cores run out.
``cpu``
    the receiver answers at once; every worker burns ``--burn-us`` (1000 us)
    of CPU per event in a delivery hook's ``before_send`` on its event loop
    -- where a Python transform runs (the transforms of another issue are not
    in this branch, so a hook stands in for one).

    .venv/bin/python bench/scale_out.py [--case webhook|cpu|both]
        [--workers 1,2,4,8] [--events 2000] [--json bench/results/scale_out.json]

Worker processes run this file with ``child`` (the same Worker as
``walrelay worker``, plus the CPU-burning hook).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from walrelay.model import Event
from walrelay.testing.pgcluster import free_port
from walrelay.testing.relay_records import relay_update
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import QUICK_BROKER


class Receiver:
    """A webhook peer that answers after a fixed delay and counts distinct ids."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.ids: set[str] = set()
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.latency:
            await asyncio.sleep(self.latency)  # the peer's fixed service time
        self.ids.add(orjson.loads(body)["id"])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def produce(bootstrap: str, topic: str, events: int, keys: int) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )
    for i in range(events):
        lsn = 0x1000 + i
        key = i % keys
        value, record_key, headers = relay_update(
            "public.bench", key, {"id": key, "n": i}, lsn, "2024-01-01T00:00:00+00:00"
        )
        producer.produce(topic, value=value, key=record_key, headers=headers)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)


def group_stable(bootstrap: str, group: str, members: int, partitions: int) -> bool:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group])[group].result(10)
    except Exception:  # not there yet, or the broker is busy: ask again
        return False
    if desc.state != ConsumerGroupState.STABLE or len(desc.members) != members:
        return False
    assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
    return bool(assigned == partitions)


def worker_file(
    path: Path, bootstrap: str, group: str, topic: str, url: str, in_flight: int
) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "worker": {
                    "kafka": {
                        "bootstrap": bootstrap,
                        "group": group,
                        "topics": [topic],
                        "session_timeout": 6,
                        "commit_interval": 1,
                    }
                },
                # Parking and the ledger are off: no state database is used.
                "state": {"dsn": "postgresql://unused@127.0.0.1:1/unused"},
                "ledger": {"type": "none"},
                "log_level": "warning",
                "destinations": [
                    {
                        "name": "hook",
                        "max_in_flight": in_flight,
                        "parking": {"enabled": False},
                        "sink": {"type": "webhook", "url": url},
                    }
                ],
            }
        )
    )


def spawn(n: int, config: Path, burn_us: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes (this file's ``child``), each logging to its own file."""
    out = []
    for i in range(n):
        with open(f"{logs}-{i}.log", "wb") as log:
            args = ["child", "--config", str(config), "--burn-us", str(burn_us)]
            out.append(subprocess.Popen([sys.executable, __file__, *args], stderr=log))
    return out


async def run_count(
    kafka: KafkaServer, args: argparse.Namespace, case: str, n: int, workdir: Path
) -> dict[str, Any]:
    latency = args.latency if case == "webhook" else 0.0
    burn = args.burn_us if case == "cpu" else 0
    receiver = Receiver(latency)
    await receiver.start()
    topic = f"bench-{case}-{n}-{uuid.uuid4().hex[:6]}"
    group = f"g-{topic}"
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])[
        topic
    ].result(30)
    cfg = workdir / f"{topic}.yaml"
    worker_file(
        cfg, kafka.bootstrap, group, topic, f"http://127.0.0.1:{receiver.port}/hook", args.in_flight
    )
    children = await asyncio.to_thread(spawn, n, cfg, burn, workdir / topic)
    try:
        # Starting N Python processes takes a while on a busy 2-core machine.
        deadline = time.monotonic() + 180
        while not await asyncio.to_thread(group_stable, kafka.bootstrap, group, n, args.partitions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group} did not become stable with {n} members")
            await asyncio.sleep(0.2)  # polling the group's state
        start = time.monotonic()
        await asyncio.to_thread(produce, kafka.bootstrap, topic, args.events, args.keys)
        while len(receiver.ids) < args.events:
            if time.monotonic() - start > 120:
                raise RuntimeError(f"only {len(receiver.ids)} of {args.events} events arrived")
            await asyncio.sleep(0.01)  # polling the receiver's count
        elapsed = time.monotonic() - start
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        await receiver.stop()
    rate = args.events / elapsed
    print(f"  {case:8} workers={n}: {args.events} events in {elapsed:6.2f}s = {rate:8.0f} events/s")
    return {"case": case, "workers": n, "events": args.events, "seconds": elapsed, "rate": rate}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(x) for x in args.workers.split(",")]
    cases = ["webhook", "cpu"] if args.case == "both" else [args.case]
    results: list[dict[str, Any]] = []
    with (
        KafkaServer(config=QUICK_BROKER) as kafka,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for case in cases:
            print(f"case {case}:")
            for n in counts:
                results.append(await run_count(kafka, args, case, n, Path(tmp)))
    for case in cases:
        rows = [r for r in results if r["case"] == case]
        base = rows[0]["rate"]
        for r in rows:
            r["ratio_to_one"] = r["rate"] / base
        print(f"{case}: " + ", ".join(f"{r['workers']}w {r['ratio_to_one']:.2f}x" for r in rows))
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            k: getattr(args, k)
            for k in ("events", "keys", "partitions", "latency", "in_flight", "burn_us")
        },
        "results": results,
    }


# -- the worker processes ----------------------------------------------------------


def child(config_path: str, burn_us: int) -> None:
    from walrelay.cli.main import run_until_signalled, setup_logging
    from walrelay.pipeline.hooks import DeliveryHook
    from walrelay.worker.config import load_worker_config
    from walrelay.worker.runner import Worker

    class BurnCpu(DeliveryHook):
        """A Python transform's cost: ``burn_us`` of CPU per event, on the loop."""

        async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
            end = time.thread_time() + burn_us * len(events) / 1e6
            while time.thread_time() < end:
                pass
            return events

    class BenchWorker(Worker):
        def _hooks_for(self, name: str) -> list[DeliveryHook]:
            return [*([BurnCpu()] if burn_us else []), *super()._hooks_for(name)]

    config = load_worker_config(config_path)
    setup_logging(config.log_level)
    worker = BenchWorker(config)
    run_until_signalled(worker.run, worker.request_stop)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        ap = argparse.ArgumentParser()
        ap.add_argument("child")
        ap.add_argument("--config", required=True)
        ap.add_argument("--burn-us", type=int, default=0)
        a = ap.parse_args()
        child(a.config, a.burn_us)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", choices=["webhook", "cpu", "both"], default="both")
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.020)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--burn-us", type=int, default=1000)
    ap.add_argument("--json", default="bench/results/scale_out.json")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
