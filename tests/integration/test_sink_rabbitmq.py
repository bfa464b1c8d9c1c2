"""RabbitMQ sink against a real RabbitMQ node and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import aio_pika.exceptions
import orjson
import pytest

from tests.integration.broker_workloads import (
    EVERY_OP_COPIES,
    EVERY_OP_TABLES,
    LEDGER_TABLE,
    LedgerWriter,
    Seen,
    check_every_op,
    check_ledger,
    counter_deliveries,
    every_op_run,
    every_op_setup,
    ledger_setup,
    per_key_run,
    per_key_setup,
    retry_fast,
    unique_prefix,
)
from tests.integration.support import make_config, running_engine, wait_for
from walrelay.config import RabbitMQSinkConfig
from walrelay.errors import ConfigError
from walrelay.sinks.base import SinkContext
from walrelay.sinks.rabbitmq import RabbitMQSink
from walrelay.testing.checker import check
from walrelay.testing.servers import RabbitMQServer

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def server() -> Iterator[RabbitMQServer]:
    with RabbitMQServer() as srv:
        yield srv


class QueueReader:
    """A durable queue bound to the exchange with ``#``, drained on each read."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = exchange
        self.queue = f"{exchange}.all"
        self.seen: list[Seen] = []

    async def bind(self) -> None:
        conn = await aio_pika.connect(self.url)
        try:
            channel = await conn.channel()
            exchange = await channel.declare_exchange(self.exchange, "topic", durable=True)
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, "#")
        finally:
            await conn.close()

    async def read(self, limit: float = 1.0) -> int:
        """Drain the queue, for ``limit`` seconds at most."""
        deadline = asyncio.get_running_loop().time() + limit
        try:
            conn = await aio_pika.connect(self.url, timeout=2)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
            return len(self.seen)  # the server is down
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(self.queue, durable=True, passive=True)
            while asyncio.get_running_loop().time() < deadline:
                message = await queue.get(no_ack=True, fail=False, timeout=5)
                if message is None:
                    break
                envelope = orjson.loads(message.body)
                assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                assert message.type == envelope["op"]
                self.seen.append(Seen(message.routing_key or "", envelope, message.message_id))
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
            pass
        finally:
            await conn.close()
        return len(self.seen)

    async def until(self, count: int, within: float = 60.0) -> None:
        """Until ``count`` distinct messages (by message_id and copy) arrived."""

        async def enough() -> bool:
            await self.read()
            return len({(s.msg_id, s.name) for s in self.seen}) >= count

        await wait_for(enough, within=within, what=f"{count} messages in {self.queue}")


def rabbit_dest(server: RabbitMQServer, prefix: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": f"rabbit-{prefix}",
        "retry": retry_fast(),
        "sink": {"type": "rabbitmq", "url": server.url, "prefix": prefix, "timeout": 3, **sink},
    }


async def test_every_op(server: RabbitMQServer, db: str) -> None:
    every_op_setup(db)
    prefix = unique_prefix("q")
    reader = QueueReader(server.url, prefix)
    await reader.bind()
    config = make_config(db, EVERY_OP_TABLES, [rabbit_dest(server, prefix)])
    async with running_engine(config):
        every_op_run(db)
        await reader.until(EVERY_OP_COPIES)
    assert await reader.read(limit=5) == EVERY_OP_COPIES
    check_every_op(reader.seen)
    keys = {(s.envelope["op"], s.name) for s in reader.seen}
    assert ("insert", "public.items.insert") in keys
    assert ("message", "message") in keys
    assert ("truncate", "public.full_ident.truncate") in keys
    assert all(s.msg_id == s.envelope["id"] for s in reader.seen)


async def test_per_key_order_parallel(server: RabbitMQServer, db: str) -> None:
    per_key_setup(db)
    prefix = unique_prefix("q")
    reader = QueueReader(server.url, prefix)
    await reader.bind()
    dest = rabbit_dest(server, prefix, batch_size=10)
    dest["max_in_flight"] = 100
    config = make_config(db, ["public.counters"], [dest])
    async with running_engine(config) as engine:
        destination = engine.destinations[dest["name"]]
        assert destination.max_in_flight == 100 and not destination.ordered
        expected = per_key_run(db)
        await reader.until(len(expected))
    report = check(expected, counter_deliveries(reader.seen))
    assert report.ok(), report.summary()


async def test_server_killed_and_restarted(server: RabbitMQServer, db: str) -> None:
    ledger_setup(db)
    prefix = unique_prefix("q")
    reader = QueueReader(server.url, prefix)
    await reader.bind()
    dest = rabbit_dest(server, prefix, batch_size=50)
    dest["max_in_flight"] = 200
    config = make_config(db, [LEDGER_TABLE], [dest])
    async with running_engine(config) as engine:
        destination = engine.destinations[dest["name"]]
        writer = LedgerWriter(db).start()
        await reader.until(200)
        # The reader's queue and the sink's exchange on disk first (Mnesia
        # writes definitions lazily: see RabbitMQServer.sync_metadata).
        await asyncio.to_thread(server.sync_metadata)
        await asyncio.to_thread(server.kill)
        assert writer.committed < writer.transactions, "killed after the stream ended"
        await wait_for(lambda: destination.failures_total > 0, what="a failed delivery")
        await server.arestart()
        await asyncio.to_thread(writer.join)
        await reader.until(writer.events, within=120)
    await reader.read(limit=10)
    # Nothing lost; duplicates possible (no broker-side dedup), each one carrying
    # the message_id of a message seen before it.
    report = check_ledger(writer, reader.seen, allow_duplicates=True)
    assert not report.id_changed
    first_seen: set[str] = set()
    duplicates = 0
    for s in reader.seen:
        assert s.msg_id is not None
        if s.msg_id in first_seen:
            duplicates += 1
        first_seen.add(s.msg_id)
    assert duplicates == report.duplicates
    print(f"rabbitmq kill/restart: {report.summary(allow_duplicates=True)}")


async def test_missing_exchange_without_auto_create(server: RabbitMQServer) -> None:
    prefix = unique_prefix("q")
    sink = RabbitMQSink(
        RabbitMQSinkConfig(url=server.url, prefix=prefix, auto_create=False),
        SinkContext(tables=("public.t",)),
    )
    with pytest.raises(ConfigError, match=rf"exchange {prefix} does not exist"):
        await sink.open()


async def test_unroutable_is_a_permanent_error(server: RabbitMQServer) -> None:
    from datetime import UTC, datetime

    from walrelay.errors import SinkError
    from walrelay.model import Event

    prefix = unique_prefix("q")
    # The exchange exists, no queue is bound.
    sink = RabbitMQSink(RabbitMQSinkConfig(url=server.url, prefix=prefix, unroutable_grace=0.5))
    await sink.open()
    opened = time.monotonic()  # the connection is at least as old as this
    try:
        event = Event(1, 0, "insert", "public.t", ("k",), b"{}", 1, datetime.now(UTC))
        # On a fresh connection (a restarted broker recovering its bindings) it is retried.
        with pytest.raises(SinkError, match="unroutable") as exc:
            await sink.deliver([event])
        assert not exc.value.permanent and "after connecting" in str(exc.value)
        await wait_for(lambda: time.monotonic() - opened > 0.5, what="the grace to pass")
        with pytest.raises(SinkError, match="unroutable") as exc:
            await sink.deliver([event])
        assert exc.value.permanent
    finally:
        await sink.close()


async def drain(url: str, queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(url, timeout=5)
    out: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            out.append(message)
    finally:
        await conn.close()
    return out


async def test_outbox_events_arrive_with_routed_routing_keys(
    server: RabbitMQServer, db: str
) -> None:
    """Mirror of test_outbox's Kafka test: route.topic is the routing key on the
    configured exchange, the payload the body, aggregate_id the walrelay-key header."""
    from tests.integration.support import execute
    from tests.integration.test_outbox import (
        EXPECTED_PAYLOADS,
        init,
        make,
        write_aggregate_history,
        write_orders,
    )

    await init(db)
    execute(db, "create table orders (id int primary key, total numeric)")
    prefix = unique_prefix("q")
    reader = QueueReader(server.url, prefix)  # exchange {prefix}, a queue bound with '#'
    await reader.bind()
    dest = rabbit_dest(server, prefix)
    dest["router"] = {"type": "outbox"}  # topic: {routed_by}.events
    config = make(db, [dest])
    async with running_engine(config) as engine:
        expected = await write_orders(db)
        history = await write_aggregate_history(db, "42", 5)
        await wait_for(
            lambda: (
                engine.tracker.pending_events() == 0 and engine.stats.events_in >= 4 + len(history)
            ),
            within=60,
            what="the events delivered to RabbitMQ",
        )
    messages = await drain(server.url, reader.queue)
    payloads = [orjson.loads(m.body) for m in messages]  # the payload as JSON
    keys = [str((m.headers or {})["walrelay-key"]) for m in messages]
    # Each first event once, on its routing key (their keys differ, so their
    # deliveries may overlap and arrive in any order).
    got = [
        (m.routing_key, k)
        for m, k, p in zip(messages, keys, payloads, strict=True)
        if "step" not in p
    ]
    order = [k for _, k in expected]
    assert sorted(got, key=lambda rk: order.index(rk[1])) == expected
    for m, key, payload in zip(messages, keys, payloads, strict=True):
        headers = m.headers or {}
        if "step" not in payload:
            assert payload == EXPECTED_PAYLOADS[key]
        assert m.exchange == prefix and m.content_type == "application/json"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert str(headers["event_type"]) in ("OrderCreated", "InvoiceSent", "OrderUpdated")
        assert str(headers["aggregate_type"]) in ("order", "invoice")
        assert "walrelay-tombstone" not in headers
    assert sorted(str(m.type) for m in messages) == ["insert"] * (3 + len(history)) + ["message"]
    assert len({m.message_id for m in messages}) == 4 + len(history)
    # One aggregate's events arrive in commit order.
    of_42 = [p for k, p in zip(keys, payloads, strict=True) if k == "42"]
    assert of_42 == [EXPECTED_PAYLOADS["42"], *history]


async def test_routed_tombstone(server: RabbitMQServer) -> None:
    from datetime import UTC, datetime

    from walrelay.model import Event, Route

    prefix = unique_prefix("q")
    reader = QueueReader(server.url, prefix)
    await reader.bind()
    sink = RabbitMQSink(RabbitMQSinkConfig(url=server.url, prefix=prefix))
    await sink.open()
    try:
        route = Route("order.events", "9", None, (("event_type", "OrderDeleted"),))
        event = Event(1, 0, "insert", "public.outbox", ("k",), b"{}", 1, datetime.now(UTC), route)
        await sink.deliver([event])
    finally:
        await sink.close()
    [message] = await drain(server.url, reader.queue)
    assert message.routing_key == "order.events" and message.body == b""
    headers = message.headers or {}
    assert str(headers["walrelay-tombstone"]) == "true" and str(headers["walrelay-key"]) == "9"
    assert str(headers["event_type"]) == "OrderDeleted"
