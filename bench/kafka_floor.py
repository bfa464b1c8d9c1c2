"""Kafka exactly_once latency with none of walrelay: the broker's own floor.

A bare transactional confluent-kafka producer, on the same broker as the
walrelay run, is offered the same rate the same way (every 10 ms a tick of
``rate / 100`` records, each stamped with ``time.time()`` as it is offered)
and commits continuously: begin, produce everything offered since the last
commit, commit, wait ``spacing``, again -- the cadence walrelay's Kafka sink
keeps under load. The same ``read_committed`` reader as walrelay's stamps each
record as it becomes readable. What is left is the transaction round trips,
the broker's marker writes and the reader's fetches: the latency any
exactly-once producer in Python pays here, before reading a slot.

Used by ``bench/latency.py`` (the "bare producer" line of the Kafka row); on
its own:

    .venv/bin/python bench/kafka_floor.py [--rates 1000,10000] [--seconds 5]
        [--json bench/results/kafka_floor.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
import uuid
from typing import Any, Protocol

TICK = 0.01
WARMUP_RATE = 0  # as bench/latency.py: the warm-up, not measured


def _offer(
    rate: int,
    seconds: float,
    pending: collections.deque[bytes],
    done: threading.Event,
    tag: int | None = None,
) -> None:
    per_tick = max(1, rate // 100)
    tag = rate if tag is None else tag
    t0 = next_tick = time.monotonic()
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now < next_tick:
            time.sleep(next_tick - now)  # pacing the offered rate
        stamp = time.time()
        value = json.dumps({"lat_rate": tag, "lat_t": stamp}).encode()
        pending.extend(value for _ in range(per_tick))
        next_tick += TICK
    done.set()


def kafka_arrivals(consumer: Any) -> list[tuple[Any, float]]:
    """The records readable now, each with the time it was taken (waits up to
    50 ms for the first). ``consume(n, timeout)`` is not used to wait: it
    returns only once it has ``n`` records or the timeout has passed
    (librdkafka's ``rd_kafka_q_serve_rkmessages``), which would stamp a
    record up to the whole timeout late."""
    first = consumer.poll(0.05)
    if first is None:
        return []
    arrived = time.time()
    rest = consumer.consume(10_000, 0)  # what is already queued, without waiting
    now = time.time()
    return [(first, arrived), *((msg, now) for msg in rest)]


class _TransactionalProducer:
    """A bare transactional producer with acks=all and idempotence, as
    walrelay's exactly_once sink configures it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"floor-{uuid.uuid4()}",
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self.producer.init_transactions(30)

    def commit_continuously(
        self, spacing: float, pending: collections.deque[bytes], done: threading.Event
    ) -> int:
        """Begin, produce all pending, commit, wait ``spacing``; until ``done``
        is set and nothing is pending. Returns the records sent."""
        producer, topic, sent = self.producer, self.topic, 0
        while not (done.is_set() and not pending):
            if not pending:
                time.sleep(0.0005)  # nothing offered yet
                continue
            producer.begin_transaction()
            while pending:
                producer.produce(topic, pending.popleft())
                sent += 1
            producer.commit_transaction(30)
            if spacing:
                time.sleep(spacing)
        return sent

    def send_one(self, value: bytes) -> None:
        done = threading.Event()
        done.set()
        self.commit_continuously(0, collections.deque([value]), done)


class SampleSink(Protocol):
    def add_json(self, raw: bytes, arrived: float) -> None: ...
    def count(self, rate: int) -> int: ...


def measure(
    bootstrap: str,
    rate: int,
    seconds: float,
    spacing: float,
    samples: SampleSink,
    warmup: float = 0.0,
) -> int:
    """Offer ``rate`` records/s for ``seconds`` (after ``warmup`` seconds at
    that rate, not measured) through a bare transactional producer into a
    fresh topic read by a ``read_committed`` consumer, whose arrivals go to
    ``samples``. Returns the records sent, once the reader has seen them all
    (or 30 s passed without progress)."""
    from confluent_kafka import Consumer

    topic = f"floor-{uuid.uuid4().hex[:8]}"
    producer = _TransactionalProducer(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"floor-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "topic.metadata.refresh.interval.ms": 200,
        }
    )
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for msg, arrived in kafka_arrivals(consumer):
                if msg.error() is None:
                    samples.add_json(msg.value() or b"", arrived)

    warm = json.dumps({"lat_rate": WARMUP_RATE, "lat_t": 0.0}).encode()
    producer.send_one(warm)  # creates the topic
    consumer.subscribe([topic])
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while samples.count(WARMUP_RATE) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka floor: the reader saw nothing of topic {topic} in 60 s")
            producer.send_one(warm)
            time.sleep(0.5)  # one warm-up record per half second until the reader has one

        sent = 0
        for tag, span in ((WARMUP_RATE, warmup), (rate, seconds)):
            if span <= 0:
                continue
            pending: collections.deque[bytes] = collections.deque()
            done = threading.Event()
            offering = threading.Thread(
                target=_offer, args=(rate, span, pending, done, tag), daemon=True
            )
            offering.start()
            sent = producer.commit_continuously(spacing, pending, done)
            offering.join()
        last, still = -1, time.monotonic()
        while (seen := samples.count(rate)) < sent and time.monotonic() - still < 30:
            if seen != last:
                last, still = seen, time.monotonic()
            time.sleep(0.05)  # waiting for the reader to catch up
    finally:
        stop.set()
        reader.join(timeout=10)
        consumer.close()
        producer.producer.flush(10)
    return sent


def main() -> int:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from latency import Samples, percentiles
    from walrelay.testing.servers import KafkaServer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--spacing", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--json", default="bench/results/kafka_floor.json")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with KafkaServer() as kafka:
        for rate in (int(r) for r in args.rates.split(",")):
            samples = Samples()
            sent = measure(kafka.bootstrap, rate, args.seconds, args.spacing, samples, args.warmup)
            results[str(rate)] = {"sent": sent, **percentiles(samples.by_rate[rate])}
    print(f"{'rate/s':>8}{'sent':>9}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>8}")
    for shown, r in results.items():
        print(
            f"{shown:>8}{r['sent']:>9}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
            f"{r['p99_9_ms']:>8.1f}{r['max_ms']:>8.1f}"
        )
    print("(milliseconds, offered -> readable by a read_committed consumer)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {"benchmark": "kafka_floor", "spacing": args.spacing, "results": results}, indent=2
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
