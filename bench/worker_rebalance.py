"""Rebalances under a backlog: what a worker group delivers twice.

One Kafka broker (KRaft, walrelay.testing.servers), one 12-partition topic
fed at a steady rate with relay-shaped records, and in-process workers
(:class:`walrelay.worker.runner.Worker`) delivering to slow in-memory sinks
(20-60 ms a batch of 10, 8 in flight), so each worker has a backlog. Every
``--period`` seconds a worker joins; from the third on, the oldest one stops
(a revoke on every member, then a close). At the end the last members
deliver everything; the bench counts events delivered more than once, the
revokes that hit ``revoke_timeout`` and the final (revoke or stop) offset
commits that failed, from the workers' logs.

    .venv/bin/python bench/worker_rebalance.py [--rounds 6] [--period 4]
        [--json bench/results/worker_rebalance.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from walrelay.config import DestinationConfig
from walrelay.sinks.base import Sink
from walrelay.sinks.memory import MemorySink
from walrelay.testing.relay_records import relay_update
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import QUICK_BROKER, quick_group
from walrelay.worker.config import parse_worker_config
from walrelay.worker.runner import Worker


class Counts(logging.Handler):
    """Counts the worker log lines this bench reports."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.revoke_timeouts = 0
        self.final_commit_failures = 0
        self.periodic_commit_failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "revoke_timeout reached" in text:
            self.revoke_timeouts += 1
        elif "final offset commit" in text or (
            "committing offsets failed" in text and record.levelno >= logging.WARNING
        ):
            self.final_commit_failures += 1
        elif "committing offsets failed" in text:
            self.periodic_commit_failures += 1


def feed(bootstrap: str, topic: str, stop: threading.Event, produced: list[int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    lsn = 0x100
    while not stop.is_set():
        for key in range(1, 200):
            lsn += 1
            value, record_key, headers = relay_update("public.t", key, {"id": key, "v": lsn}, lsn)
            producer.produce(topic, value=value, key=record_key, headers=headers)
        producer.flush(30)
        produced[0] += 199
        time.sleep(0.4)


def wait_until(done: Callable[[], bool], within: float) -> None:
    """Poll ``done`` (a bench reads sinks' lists: there is nothing to await)."""
    deadline = time.monotonic() + within
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


async def run(rounds: int, period: float) -> dict[str, Any]:
    counts = Counts()
    logging.getLogger("walrelay.worker").addHandler(counts)
    logging.getLogger("walrelay.worker").setLevel(logging.DEBUG)
    logging.getLogger("walrelay.worker.librdkafka").setLevel(logging.WARNING)
    with KafkaServer(config=QUICK_BROKER) as kafka:
        topic = f"rebalance{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        new = NewTopic(topic, num_partitions=12, replication_factor=1)
        admin.create_topics([new])[topic].result(30)
        config = parse_worker_config(
            {
                "worker": {
                    "kafka": quick_group(
                        kafka.bootstrap,
                        f"g-{topic}",
                        [topic],
                        commit_interval=0.05,
                        revoke_timeout=3,
                    )
                },
                "state": {"dsn": "postgresql://unused@127.0.0.1:1/unused"},
                "ledger": {"type": "none"},
                "shutdown_timeout": 5,
                "destinations": [
                    {
                        "name": "m",
                        "max_in_flight": 8,
                        "parking": {"enabled": False},
                        "sink": {"type": "stdout"},
                    }
                ],
            },
            "(bench)",
        )
        sinks: list[MemorySink] = []

        def factory(_d: DestinationConfig) -> Sink:
            sinks.append(MemorySink(batch_size=10, delay=(0.02, 0.06), seed=len(sinks)))
            return sinks[-1]

        def unique() -> int:
            return len({e.id for s in sinks for e in s.delivered})

        stop = threading.Event()
        produced = [0]
        feeder = threading.Thread(target=feed, args=(kafka.bootstrap, topic, stop, produced))
        feeder.start()
        workers: list[Worker] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for n in range(rounds):
                worker = Worker(config, sink_factory=factory, name=f"w{n}")
                workers.append(worker)
                tasks.append(asyncio.create_task(worker.run()))
                await asyncio.sleep(period)
                if len(workers) >= 3:
                    workers.pop(0).request_stop()
                    await asyncio.wait_for(tasks.pop(0), 60)
        finally:
            stop.set()
            await asyncio.to_thread(feeder.join)
        await asyncio.to_thread(wait_until, lambda: unique() >= produced[0], 120.0)
        for worker in workers:
            worker.request_stop()
        await asyncio.gather(*tasks)
    ids = [e.id for s in sinks for e in s.delivered]
    return {
        "produced": produced[0],
        "delivered": len(ids),
        "unique": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "revoke_timeouts": counts.revoke_timeouts,
        "final_commit_failures": counts.final_commit_failures,
        "periodic_commit_failures": counts.periodic_commit_failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--period", type=float, default=4.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.period))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
