"""The real servers of walrelay.testing.servers: start, round trip, crash, restart, stop.

Select with ``-m servers``. A missing server fails these tests with a message
naming scripts/servers/install.sh; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.integration.support import stream_entries
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.servers import (
    KafkaServer,
    NatsServer,
    RabbitMQServer,
    RedisServer,
    ServerNotInstalled,
)

pytestmark = pytest.mark.servers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def assert_gone(pids: list[int], root: Path) -> None:
    assert pids, "the server had no process"
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"processes left behind: {alive}"
    assert not root.exists(), f"temp dir left behind: {root}"


# --------------------------------------------------------------------------- Redis


async def test_redis_stream_round_trip_survives_kill_and_restart() -> None:
    with RedisServer() as srv:
        pids, root = srv.pids(), srv.root
        client = aioredis.Redis.from_url(srv.url)
        try:
            ids = [await client.xadd("walrelay:test", {"n": str(i)}) for i in range(3)]
            entries = stream_entries(await client.xrange("walrelay:test"))
            assert [e[0] for e in entries] == ids
            assert [e[1][b"n"] for e in entries] == [b"0", b"1", b"2"]
        finally:
            await client.aclose()

        old_pid = srv.pid
        srv.kill()
        assert not _alive(old_pid)
        await srv.arestart()
        client = aioredis.Redis.from_url(srv.url)
        try:
            entries = stream_entries(await client.xrange("walrelay:test"))  # from the AOF
            assert [e[0] for e in entries] == ids
        finally:
            await client.aclose()
        pids += srv.pids()
    assert_gone(pids, root)


def test_stop_even_when_the_test_fails() -> None:
    with pytest.raises(ZeroDivisionError), RedisServer() as srv:
        pids, root = srv.pids(), srv.root
        _ = 1 / 0
    assert_gone(pids, root)


def test_failed_start_reports_the_log_and_cleans_up(tmp_path: Path) -> None:
    srv = RedisServer(config={"no-such-directive": "1"}, base_dir=tmp_path)
    with pytest.raises(RuntimeError, match="no-such-directive") as info:
        srv.start()
    assert "redis exited during start-up" in str(info.value)
    assert srv.pids() == []
    assert list(tmp_path.iterdir()) == []


def test_missing_servers_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WALRELAY_KAFKA_LIBS", str(tmp_path))
    with pytest.raises(ServerNotInstalled, match=r"scripts/servers/install\.sh"):
        KafkaServer()
    monkeypatch.setenv("WALRELAY_RABBITMQ_SERVER", str(tmp_path / "rabbitmq-server"))
    with pytest.raises(RuntimeError, match=r"scripts/servers/install\.sh"):
        RabbitMQServer()


# --------------------------------------------------------------------------- NATS


async def test_nats_jetstream_dedup_survives_kill_and_restart() -> None:
    with NatsServer() as srv:
        pids, root = srv.pids(), srv.root
        nc = await nats.connect(srv.url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await js.add_stream(name="WALRELAY", subjects=["walrelay.>"])
            first = await js.publish("walrelay.t", b"one", headers={"Nats-Msg-Id": "m-1"})
            second = await js.publish("walrelay.t", b"one", headers={"Nats-Msg-Id": "m-1"})
            assert not first.duplicate
            assert second.duplicate
            assert second.seq == first.seq
            assert (await js.stream_info("WALRELAY")).state.messages == 1
        finally:
            await nc.close()

        srv.kill()
        await srv.arestart()
        nc = await nats.connect(srv.url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            info = await js.stream_info("WALRELAY")  # from the file store
            assert info.state.messages == 1
            msg = await js.get_msg("WALRELAY", first.seq)
            assert msg.data == b"one"
        finally:
            await nc.close()
        pids += srv.pids()
    assert_gone(pids, root)


# --------------------------------------------------------------------------- RabbitMQ


async def test_rabbitmq_confirmed_publish_consume_survives_kill_and_restart() -> None:
    async def publish(url: str, body: bytes) -> None:
        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel(publisher_confirms=True)
            queue = await channel.declare_queue("walrelay.test", durable=True)
            confirm = await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            )
            assert confirm is not None  # the broker's ack, with confirms on
        finally:
            await conn.close()

    async def consume_one(url: str) -> bytes:
        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue("walrelay.test", durable=True)
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        return message.body
            raise AssertionError("queue iterator ended")
        finally:
            await conn.close()

    with RabbitMQServer() as srv:
        pids, root = srv.pids(), srv.root
        assert len(pids) >= 3  # start script, beam.smp, our own epmd
        await publish(srv.url, b"first")
        assert await asyncio.wait_for(consume_one(srv.url), 10) == b"first"

        await publish(srv.url, b"persistent")
        # The queue's definition on disk first: Mnesia writes it lazily, and a
        # queue declared a moment before a SIGKILL is otherwise lost with its
        # confirmed messages about once in a dozen runs (RabbitMQ 3.10).
        await asyncio.to_thread(srv.sync_metadata)
        srv.kill()
        await srv.arestart()
        assert await asyncio.wait_for(consume_one(srv.url), 10) == b"persistent"
        pids += srv.pids()
    assert_gone(pids, root)


# --------------------------------------------------------------------------- Kafka


def _read_committed(bootstrap: str, topic: str, group: str) -> list[bytes]:
    consumer = reading_consumer(bootstrap, group, eof=True)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return values
                raise AssertionError(f"consumer error: {err}")
            value = msg.value()
            assert value is not None
            values.append(value)
        raise AssertionError(f"no end of partition in 30 s; read {values}")
    finally:
        consumer.close()


def _transactional_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": "walrelay-test", "linger.ms": 0}
    )
    producer.init_transactions(30)
    return producer


def test_kafka_transactions_read_committed_survive_kill_and_restart() -> None:
    with KafkaServer() as srv:
        pids, root = srv.pids(), srv.root
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        created = admin.create_topics([NewTopic("walrelay.test", 1, 1)])
        created["walrelay.test"].result(30)

        producer = _transactional_producer(srv.bootstrap)
        producer.begin_transaction()
        for i in range(3):
            producer.produce("walrelay.test", key=b"k", value=f"c{i}".encode())
        producer.commit_transaction(30)
        producer.begin_transaction()
        producer.produce("walrelay.test", key=b"k", value=b"aborted")
        producer.flush(30)
        producer.abort_transaction(30)
        assert _read_committed(srv.bootstrap, "walrelay.test", "g1") == [b"c0", b"c1", b"c2"]

        srv.kill()
        srv.restart()
        assert _read_committed(srv.bootstrap, "walrelay.test", "g2") == [b"c0", b"c1", b"c2"]
        # The transaction coordinator's state survived too: the same id can go on.
        producer = _transactional_producer(srv.bootstrap)
        producer.begin_transaction()
        producer.produce("walrelay.test", key=b"k", value=b"c3")
        producer.commit_transaction(30)
        assert _read_committed(srv.bootstrap, "walrelay.test", "g3")[-1] == b"c3"
        pids += srv.pids()
    assert_gone(pids, root)
