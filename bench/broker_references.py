"""Bare-client references for bench/brokers.py: the same library, broker,
durability and cadence as the walrelay sink, none of walrelay.

Each reference writes the envelopes walrelay's file sink wrote in the same run
(the same bytes), keyed and named as walrelay does, to names of its own
(prefix ``ref``) on the broker the sink just used, and is timed from the first
write to the last acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REF = "ref"


@dataclass(frozen=True)
class Payload:
    """One change as walrelay rendered it."""

    id: str
    op: str
    table: str
    key: bytes
    body: bytes


def load_payloads(jsonl: Path) -> list[Payload]:
    out = []
    with open(jsonl, "rb") as f:
        for line in f:
            body = line.rstrip(b"\n")
            env = json.loads(body)
            key = json.dumps(env.get("key"), sort_keys=True, separators=(",", ":")).encode()
            out.append(Payload(env["id"], env["op"], env.get("table") or "", key, body))
    return out


def _chunks(items: Sequence[Payload], n: int) -> list[Sequence[Payload]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# -- Kafka ---------------------------------------------------------------------------


def _kafka_common(server: Any) -> dict[str, Any]:
    # walrelay's sink defaults: lz4, linger 5 ms, acks=all, idempotence, Java's partitioner.
    return {
        "bootstrap.servers": server.bootstrap,
        "compression.type": "lz4",
        "linger.ms": 5,
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
    }


def _kafka_headers(p: Payload) -> list[tuple[str, bytes]]:
    """The headers walrelay's sink sends with each record."""
    return [("id", p.id.encode()), ("op", p.op.encode()), ("table", p.table.encode())]


def kafka_warm_up(server: Any, records: int = 30_000) -> None:
    """Bring a just-started broker's JVM up to speed (not timed): an idempotent
    and a transactional producer write ``records`` each to a topic of their own.
    Without it whoever writes first pays the JIT warm-up (measured: a 500-record
    round trip took 90 ms on a cold broker, 40 ms on a warm one) -- walrelay,
    which runs before its reference."""
    from confluent_kafka import Producer

    value = b"x" * 300
    plain = Producer(_kafka_common(server))
    txn = Producer({**_kafka_common(server), "transactional.id": f"{REF}-warm-up"})
    txn.init_transactions(30)
    for producer, step in ((plain, records), (txn, records // 10)):
        for start in range(0, records, step):
            if producer is txn:
                txn.begin_transaction()
            for i in range(start, start + step):
                while True:
                    try:
                        producer.produce("warm-up", value, str(i).encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
            if producer is txn:
                txn.commit_transaction(30)
        producer.flush(30)


def _kafka_topic(server: Any, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    for f in admin.create_topics([NewTopic(topic)]).values():
        f.result(30)


def kafka_transactional(
    server: Any, payloads: Sequence[Payload], interval: float, max_bytes: int
) -> float:
    """A transactional producer committing every ``interval`` s or ``max_bytes``,
    whichever first (walrelay's exactly_once cadence, without its checkpoint record)."""
    from confluent_kafka import Producer

    topic = f"{REF}.eo.public.bench"
    _kafka_topic(server, topic)
    # walrelay's exactly_once default: linger for the transaction interval.
    producer = Producer(
        {**_kafka_common(server), "linger.ms": interval * 1000, "transactional.id": f"{REF}-eo"}
    )
    producer.init_transactions(30)
    t0 = time.monotonic()
    producer.begin_transaction()
    deadline, size = time.monotonic() + interval, 0
    for p in payloads:
        while True:
            try:
                producer.produce(topic, p.body, p.key, headers=_kafka_headers(p))
                break
            except BufferError:
                producer.poll(0.01)
        size += len(p.body) + len(p.key)
        if size >= max_bytes or time.monotonic() >= deadline:
            producer.commit_transaction(30)
            producer.begin_transaction()
            deadline, size = time.monotonic() + interval, 0
    producer.commit_transaction(30)
    elapsed = time.monotonic() - t0
    producer.flush(10)
    return elapsed


def kafka_idempotent(server: Any, payloads: Sequence[Payload]) -> float:
    """An idempotent producer, acks=all, everything produced then flushed."""
    from confluent_kafka import Producer

    topic = f"{REF}.alo.public.bench"
    _kafka_topic(server, topic)
    producer = Producer(_kafka_common(server))
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    t0 = time.monotonic()
    for p in payloads:
        while True:
            try:
                producer.produce(
                    topic, p.body, p.key, headers=_kafka_headers(p), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(60)
    elapsed = time.monotonic() - t0
    if left or errors:
        raise RuntimeError(f"kafka reference: {left} undelivered, errors {errors[:3]}")
    return elapsed


# -- NATS JetStream ------------------------------------------------------------------


def nats_jetstream(server: Any, payloads: Sequence[Payload], batch: int) -> float:
    """publish_async with Nats-Msg-Id, acks awaited per batch (walrelay: batch 100, ordered)."""
    import nats

    async def go() -> float:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=REF.upper(), subjects=[f"{REF}.>"])
            subject = f"{REF}.public.bench"
            t0 = time.monotonic()
            for chunk in _chunks(payloads, batch):
                futures = []
                for p in chunk:
                    headers = {"Nats-Msg-Id": p.id, "Walrelay-Op": p.op, "Walrelay-Table": p.table}
                    futures.append(
                        await js.publish_async(subject, p.body, stream=REF.upper(), headers=headers)
                    )
                await asyncio.gather(*futures)
            return time.monotonic() - t0
        finally:
            await nc.close()

    return asyncio.run(go())


# -- Redis Streams -------------------------------------------------------------------


def redis_streams(server: Any, payloads: Sequence[Payload], batch: int) -> float:
    """XADD with explicit ids, one pipeline per batch, one at a time (walrelay: 500, ordered)."""
    import redis.asyncio as aioredis

    async def go() -> float:
        client = aioredis.Redis.from_url(server.url)
        try:
            stream = f"{REF}:public.bench"
            t0 = time.monotonic()
            seq = 0
            for chunk in _chunks(payloads, batch):
                pipe = client.pipeline(transaction=False)
                for p in chunk:
                    seq += 1
                    fields = {"id": p.id, "op": p.op, "table": p.table, "body": p.body}
                    pipe.xadd(stream, fields, id=f"{seq}-0")  # type: ignore[arg-type]
                await pipe.execute()
            return time.monotonic() - t0
        finally:
            await client.aclose()

    return asyncio.run(go())


# -- RabbitMQ ------------------------------------------------------------------------


def rabbitmq_confirms(server: Any, payloads: Sequence[Payload], batch: int) -> float:
    """Persistent messages on a confirm-mode channel, confirms awaited per batch
    (walrelay: batch 100, ordered), into a durable queue bound like the sink's."""
    import aio_pika

    async def go() -> float:
        conn = await aio_pika.connect(server.url)
        try:
            channel = await conn.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(REF, "topic", durable=True)
            queue = await channel.declare_queue(f"{REF}.all", durable=True)
            await queue.bind(exchange, "#")
            persistent = aio_pika.DeliveryMode.PERSISTENT
            t0 = time.monotonic()
            for chunk in _chunks(payloads, batch):
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                p.body,
                                content_type="application/json",
                                delivery_mode=persistent,
                                message_id=p.id,
                                type=p.op,
                                headers={"walrelay-op": p.op, "walrelay-table": p.table},
                            ),
                            "public.bench",
                        )
                        for p in chunk
                    )
                )
            return time.monotonic() - t0
        finally:
            await conn.close()

    return asyncio.run(go())


Reference = Callable[[Any, Sequence[Payload]], float]
