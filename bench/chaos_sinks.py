"""The sinks of ``bench/chaos.py --all``: each one's destination config and its reader.

A reader returns what a downstream consumer of that sink sees, in the order
it sees it (per key, where the sink keeps an order): ``(envelope, id)``
pairs, ``id`` being the broker-level id (Kafka ``id`` header, JetStream
``Nats-Msg-Id``, Redis entry id, AMQP ``message_id``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

PREFIX = "chaos"
ITEMS = "public.items"
NATS_STREAM = "CHAOS"
RABBIT_QUEUE = f"{PREFIX}.all"

Seen = tuple[dict[str, Any], str | None]

# Where a replay could show twice: transactional sinks must show none.
TRANSACTIONAL = {"file": True, "pg": True, "kafka": True, "nats": True, "redis": True}
TRANSACTIONAL.update({"webhook": False, "rabbitmq": False})


def retry() -> dict[str, float]:
    return {"initial": 0.1, "max": 1.0}


def destinations(
    *,
    file: Path,
    target: str,
    hook_url: str,
    ledger_url: str,
    kafka: str,
    nats: str,
    redis: str,
    rabbitmq: str,
) -> list[dict[str, Any]]:
    """Every sink at once; the file takes every table, the others the items."""
    only_items = {"tables": [ITEMS, "public.fence"], "retry": retry()}
    return [
        {"name": "file", "sink": {"type": "file", "path": str(file)}},
        {
            "name": "pg",
            **only_items,
            "sink": {"type": "postgres", "dsn": target, "batch_size": 500},
        },
        {
            "name": "webhook",
            **only_items,
            "max_in_flight": 32,
            "sink": {"type": "webhook", "url": hook_url, "timeout": "5s"},
            "ledger": {"type": "redis", "url": ledger_url, "timeout": "1s"},
        },
        {
            "name": "kafka",
            **only_items,
            "sink": {
                "type": "kafka",
                "mode": "exactly_once",
                "bootstrap_servers": kafka,
                "prefix": PREFIX,
                "checkpoint_topic": f"{PREFIX}.checkpoints",
                "partitions": 4,
                "delivery_timeout": 10,
            },
        },
        {
            "name": "nats",
            **only_items,
            "sink": {
                "type": "nats",
                "servers": nats,
                "prefix": PREFIX,
                "stream": NATS_STREAM,
                "timeout": 3,
                # A source crash restart rewinds the slot to its last checkpoint
                # (PostgreSQL saves slot positions at checkpoints): replays can
                # reach back checkpoint_timeout (5 min), beyond the default 120 s.
                "duplicate_window": "10m",
            },
        },
        {
            "name": "redis",
            **only_items,
            "sink": {"type": "redis", "url": redis, "prefix": PREFIX, "timeout": 3},
        },
        {
            "name": "rabbitmq",
            **only_items,
            "sink": {"type": "rabbitmq", "url": rabbitmq, "prefix": PREFIX, "timeout": 5},
        },
    ]


def read_file(path: Path) -> list[Seen]:
    data = path.read_bytes() if path.exists() else b""
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return [(e, str(e["id"])) for e in (orjson.loads(line) for line in lines if line.strip())]


async def read_nats(url: str) -> list[Seen]:
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(NATS_STREAM)
        out: list[Seen] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(NATS_STREAM, seq)
            out.append((orjson.loads(msg.data or b""), (msg.headers or {}).get("Nats-Msg-Id")))
        return out
    finally:
        await nc.close()


async def read_redis(url: str) -> list[Seen]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        entries = await client.xrange(f"{PREFIX}:{ITEMS}", "-", "+")
        return [(orjson.loads(fields[b"body"]), eid.decode()) for eid, fields in entries]
    finally:
        await client.aclose()


async def bind_rabbitmq(url: str) -> None:
    """A durable queue taking every message of the exchange, declared before the run."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(PREFIX, "topic", durable=True)
        queue = await channel.declare_queue(RABBIT_QUEUE, durable=True)
        await queue.bind(exchange, "#")
    finally:
        await conn.close()


async def read_rabbitmq(url: str) -> list[Seen]:
    import aio_pika

    conn = await aio_pika.connect(url, timeout=10)
    out: list[Seen] = []
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(RABBIT_QUEUE, durable=True, passive=True)
        while True:
            message = await queue.get(no_ack=True, fail=False, timeout=10)
            if message is None:
                return out
            out.append((orjson.loads(message.body), message.message_id))
    finally:
        await conn.close()
