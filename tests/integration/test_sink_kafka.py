"""Kafka sink against a real Apache Kafka 4.x (KRaft) broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

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
from walrelay.config import KAFKA_EXACTLY_ONCE_BATCH, KafkaSinkConfig
from walrelay.errors import ConfigError, PoisonEvent, SinkUnavailable
from walrelay.model import Event, format_event_id, parse_event_id
from walrelay.sinks.base import SinkContext
from walrelay.sinks.kafka import KafkaSink
from walrelay.testing.checker import check
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.servers import KafkaServer

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer() as server:
        yield server


class Reader:
    """A read_committed consumer of every topic starting with ``prefix.``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix + "."
        self.consumer = reading_consumer(bootstrap)
        self.assigned: set[tuple[str, int]] = set()
        self.seen: list[Seen] = []
        self.by_partition: dict[tuple[str, int], list[Seen]] = {}

    def _refresh(self) -> None:
        metadata = self.consumer.list_topics(timeout=10)
        new = [
            TopicPartition(name, p, OFFSET_BEGINNING)
            for name, topic in metadata.topics.items()
            if name.startswith(self.prefix) and not name.endswith("checkpoints")
            for p in topic.partitions
            if (name, p) not in self.assigned
        ]
        if new:
            self.consumer.incremental_assign(new)
            self.assigned |= {(tp.topic, tp.partition) for tp in new}

    def read(self, quiet: float = 0.3, limit: float = 1.0) -> int:
        """Consume until nothing came for ``quiet`` s, or for ``limit`` s at most."""
        self._refresh()
        last = start = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() - start < limit:
            msg = self.consumer.poll(0.05)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    continue
                raise AssertionError(f"consumer error: {err}")
            last = time.monotonic()
            headers = dict(msg.headers() or [])
            value = msg.value()
            assert value is not None
            envelope = orjson.loads(value)
            topic, partition = msg.topic(), msg.partition()
            assert topic is not None and partition is not None
            assert headers["id"] == envelope["id"].encode()
            assert headers["op"] == envelope["op"].encode()
            msg_id = headers["id"]
            assert isinstance(msg_id, bytes)
            seen = Seen(topic, envelope, msg_id.decode())
            self.seen.append(seen)
            self.by_partition.setdefault((topic, partition), []).append(seen)
            if envelope["op"] not in ("message", "truncate"):
                assert msg.key() == orjson.dumps(envelope["key"], option=orjson.OPT_SORT_KEYS)
        return len(self.seen)

    async def until(self, count: int, within: float = 60.0) -> None:
        async def enough() -> bool:
            return await asyncio.to_thread(self.read) >= count

        await wait_for(enough, within=within, what=f"{count} records in Kafka")

    def in_partition_order(self) -> list[Seen]:
        return [s for part in self.by_partition.values() for s in part]

    def close(self) -> None:
        self.consumer.close()


def kafka_dest(kafka: KafkaServer, prefix: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": f"kafka-{prefix}",
        "retry": retry_fast(),
        "sink": {
            "type": "kafka",
            "bootstrap_servers": kafka.bootstrap,
            "prefix": prefix,
            "checkpoint_topic": f"{prefix}.checkpoints",
            "delivery_timeout": 5,
            **sink,
        },
    }


async def test_every_op_exactly_once(kafka: KafkaServer, db: str) -> None:
    every_op_setup(db)
    prefix = unique_prefix("k")
    config = make_config(db, EVERY_OP_TABLES, [kafka_dest(kafka, prefix)])
    reader = Reader(kafka.bootstrap, prefix)
    try:
        async with running_engine(config):
            every_op_run(db)
            await reader.until(EVERY_OP_COPIES)
        await asyncio.to_thread(reader.read, 1.0, 5.0)  # nothing more arrives
        check_every_op(reader.seen)
        assert {s.name for s in reader.seen} == {
            f"{prefix}.public.items",
            f"{prefix}.public.full_ident",
            f"{prefix}.messages",
        }
    finally:
        reader.close()


async def test_per_key_order_parallel_at_least_once(kafka: KafkaServer, db: str) -> None:
    per_key_setup(db)
    prefix = unique_prefix("k")
    dest = kafka_dest(kafka, prefix, mode="at_least_once", partitions=3, batch_size=20)
    dest["max_in_flight"] = 200
    config = make_config(db, ["public.counters"], [dest])
    reader = Reader(kafka.bootstrap, prefix)
    try:
        async with running_engine(config) as engine:
            destination = engine.destinations[dest["name"]]
            assert destination.max_in_flight == 200 and not destination.ordered
            expected = per_key_run(db)
            await reader.until(len(expected))
        assert len(reader.assigned) == 3
        report = check(expected, counter_deliveries(reader.in_partition_order()))
        assert report.ok(), report.summary()
    finally:
        reader.close()


async def test_broker_killed_and_restarted_exactly_once(kafka: KafkaServer, db: str) -> None:
    ledger_setup(db)
    prefix = unique_prefix("k")
    dest = kafka_dest(kafka, prefix, batch_size=50)
    config = make_config(db, [LEDGER_TABLE], [dest])
    reader = Reader(kafka.bootstrap, prefix)
    try:
        async with running_engine(config) as engine:
            destination = engine.destinations[dest["name"]]
            assert isinstance(destination.sink, KafkaSink)  # no ledger in front
            writer = LedgerWriter(db).start()
            await reader.until(200)
            await asyncio.to_thread(kafka.kill)
            assert writer.committed < writer.transactions, "killed after the stream ended"
            await wait_for(lambda: destination.failures_total > 0, what="a failed delivery")
            await kafka.arestart()
            await asyncio.to_thread(writer.join)
            await reader.until(writer.events, within=120)
        await asyncio.to_thread(reader.read, 1.0, 5.0)
        report = check_ledger(writer, reader.in_partition_order(), allow_duplicates=False)
        assert report.observed == writer.events
    finally:
        reader.close()


def _event(lsn: int, seq: int) -> Event:
    body = orjson.dumps(
        {
            "id": format_event_id(lsn, seq),
            "op": "insert",
            "table": "public.t",
            "key": {"id": seq},
            "record": {"id": seq},
        }
    )
    return Event(
        lsn, seq, "insert", "public.t", (f"public.t\x1f{seq}",), body, 1, datetime.now(UTC)
    )


async def test_checkpoint_skips_replay_after_restart(kafka: KafkaServer) -> None:
    prefix = unique_prefix("k")

    def sink() -> KafkaSink:
        return KafkaSink(
            KafkaSinkConfig(
                bootstrap_servers=kafka.bootstrap,
                prefix=prefix,
                checkpoint_topic=f"{prefix}.checkpoints",
                delivery_timeout=10,
            ),
            SinkContext(slot="s", destination="replay", tables=("public.t",)),
        )

    first = sink()
    await first.open()
    assert first.checkpoint is None
    await first.deliver([_event(0x1000, i) for i in range(10)])
    await first.close()

    second = sink()  # a restart: Postgres streams from an older confirmed LSN again
    await second.open()
    assert second.checkpoint == format_event_id(0x1000, 9)
    await second.deliver([_event(0x1000, i) for i in range(5, 15)])
    assert second.skipped == 5
    await second.close()

    reader = Reader(kafka.bootstrap, prefix)
    try:
        await reader.until(15)
        await asyncio.to_thread(reader.read, 1.0, 5.0)
        assert [s.envelope["record"]["id"] for s in reader.seen] == list(range(15))
    finally:
        reader.close()


async def test_missing_topic_without_auto_create(kafka: KafkaServer) -> None:
    sink = KafkaSink(
        KafkaSinkConfig(
            bootstrap_servers=kafka.bootstrap,
            prefix=unique_prefix("k"),
            auto_create=False,
            mode="at_least_once",
            delivery_timeout=5,
        ),
        SinkContext(tables=("public.orders",)),
    )
    with pytest.raises(ConfigError, match=r"topic\(s\) k\w+\.public\.orders do not exist") as exc:
        await sink.open()
    assert "auto_create" in str(exc.value)


async def test_unreachable_cluster_is_a_clear_error() -> None:
    """Unavailable, not a config error: the destination waits for the cluster
    (walrelay.engine.waiting_sink)."""
    sink = KafkaSink(KafkaSinkConfig(bootstrap_servers="127.0.0.1:1", delivery_timeout=1))
    with pytest.raises(SinkUnavailable, match=r"cannot reach the cluster at 127\.0\.0\.1:1"):
        await sink.open()


@pytest.mark.parametrize(
    ("module", "sink_type", "extra"),
    [
        ("confluent_kafka", "kafka", "kafka"),
        ("nats", "nats", "nats"),
        ("redis", "redis", "redis"),
        ("aio_pika", "rabbitmq", "rabbitmq"),
    ],
)
def test_broker_sinks_from_config_and_missing_extras(
    monkeypatch: pytest.MonkeyPatch, module: str, sink_type: str, extra: str
) -> None:
    from walrelay.config import parse_config
    from walrelay.sinks.registry import build_sink

    sinks: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "sasl_mechanism": "PLAIN"},
        "nats": {"servers": "nats://127.0.0.1:4222", "password_env": "WR_TEST_PW", "user": "u"},
        "redis": {"url": "redis://:pw@127.0.0.1/0", "password_env": "WR_TEST_PW", "tls": {}},
        "rabbitmq": {"url": "amqp://guest:guest@127.0.0.1/", "password_env": "WR_TEST_PW"},
    }
    sink_cfg = {"type": sink_type, **sinks[sink_type]}
    if sink_type == "kafka":
        sink_cfg |= {"sasl_username": "u", "sasl_password_env": "WR_TEST_PW"}
    config = parse_config(
        {
            "source": {"dsn": "dbname=x", "tables": ["orders"]},
            "destinations": [{"name": "d", "sink": sink_cfg}],
        }
    )
    dest = config.destinations[0]
    with pytest.raises(ConfigError, match="WR_TEST_PW is not set"):
        build_sink(dest.sink, destination="d", tables=["public.orders"])
    monkeypatch.setenv("WR_TEST_PW", "secret")
    sink = build_sink(dest.sink, slot="s", destination="d", tables=["public.orders"])
    # kafka exactly_once takes what is buffered; its transactions are cut by time and bytes.
    defaults = {"kafka": KAFKA_EXACTLY_ONCE_BATCH, "nats": 100, "redis": 500, "rabbitmq": 100}
    assert sink.batch_size == defaults[extra]
    assert "secret" not in repr(sink) and "pw@" not in repr(sink)
    if isinstance(sink, KafkaSink):
        assert sink.transactional_id == "walrelay-s-d" and sink.ordered
    monkeypatch.setitem(__import__("sys").modules, module, None)  # not installed
    with pytest.raises(ConfigError, match=rf"pip install 'walrelay\[{extra}\]'"):
        build_sink(dest.sink, destination="d")


def _committed_checkpoints(bootstrap: str, topic: str) -> list[str]:
    """The last_id of every committed checkpoint record in ``topic``, in order."""
    consumer = reading_consumer(bootstrap, eof=True)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        left, out = set(partitions), []
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                left.discard(msg.partition())
                continue
            value = msg.value()
            assert value is not None
            out.append(orjson.loads(value)["last_id"])
        assert not left, "the checkpoint topic was not read to its end"
        return out
    finally:
        consumer.close()


def _exactly_once_sink(
    kafka: KafkaServer, prefix: str, destination: str, **settings: Any
) -> KafkaSink:
    """An exactly_once sink on topics of ``prefix``, its checkpoints in their own topic."""
    config = KafkaSinkConfig(
        bootstrap_servers=kafka.bootstrap,
        prefix=prefix,
        checkpoint_topic=f"{prefix}.checkpoints",
        delivery_timeout=10,
        **settings,
    )
    return KafkaSink(config, SinkContext(slot="s", destination=destination, tables=("public.t",)))


@pytest.mark.parametrize(("transaction_bytes", "transactions"), [(1, 10), (4 * 2**20, 1)])
async def test_exactly_once_transactions_cut_by_bytes(
    kafka: KafkaServer, transaction_bytes: int, transactions: int
) -> None:
    prefix = unique_prefix("k")
    sink = _exactly_once_sink(
        kafka, prefix, "cut", transaction_bytes=transaction_bytes, transaction_interval=60
    )
    assert sink.batch_size == KAFKA_EXACTLY_ONCE_BATCH  # cut by bytes and time, not a count
    await sink.open()
    try:
        await sink.deliver([_event(0x2000, i) for i in range(10)])
        assert sink.checkpoint == format_event_id(0x2000, 9)
    finally:
        await sink.close()
    marks = await asyncio.to_thread(
        _committed_checkpoints, kafka.bootstrap, f"{prefix}.checkpoints"
    )
    # One transaction, each with its checkpoint, per event over the byte budget.
    expected = [format_event_id(0x2000, i) for i in range(10)][-transactions:]
    assert marks == expected
    reader = Reader(kafka.bootstrap, prefix)
    try:
        await reader.until(10)
        await asyncio.to_thread(reader.read, 1.0, 3.0)
        assert [s.envelope["record"]["id"] for s in reader.seen] == list(range(10))
    finally:
        reader.close()


async def test_exactly_once_transactions_are_spaced(kafka: KafkaServer) -> None:
    # A transaction begins transaction_spacing after the last commit at the
    # earliest, and a delivery returns only then, so what comes meanwhile goes
    # into the next transaction (one per event here: a 1-byte budget).
    prefix = unique_prefix("k")
    sink = _exactly_once_sink(kafka, prefix, "spaced", transaction_bytes=1, transaction_spacing=0.5)
    await sink.open()
    try:
        await sink.deliver([_event(0x3000, 0)])  # the producer's set-up, not timed
        started = time.monotonic()
        await sink.deliver([_event(0x3000, i) for i in range(1, 4)])
        elapsed = time.monotonic() - started
    finally:
        await sink.close()
    marks = await asyncio.to_thread(
        _committed_checkpoints, kafka.bootstrap, f"{prefix}.checkpoints"
    )
    assert marks == [format_event_id(0x3000, i) for i in range(4)]
    # Two spacings between the three transactions, one after the last; three
    # unspaced transactions take a small fraction of that.
    assert elapsed >= 3 * 0.5


def test_exactly_once_batch_size_set_by_the_user_is_kept() -> None:
    config = KafkaSinkConfig(bootstrap_servers="localhost:1", batch_size=200)
    assert KafkaSink(config, SinkContext(slot="s", destination="d")).batch_size == 200
    alo = KafkaSinkConfig(bootstrap_servers="localhost:1", mode="at_least_once")
    assert KafkaSink(alo, SinkContext(slot="s", destination="d")).batch_size == 500


def _read_committed_to_end(bootstrap: str, topic: str, within: float) -> tuple[int, bool]:
    """(records a read_committed reader sees, whether it got to the partition's
    end): an open transaction holds it at the last stable offset."""
    consumer = reading_consumer(bootstrap, eof=True)
    try:
        tp = TopicPartition(topic, 0, OFFSET_BEGINNING)
        consumer.assign([tp])
        _, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        seen, deadline = 0, time.monotonic() + within
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is None:
                seen += 1
            elif consumer.position([TopicPartition(topic, 0)])[0].offset >= high:
                return seen, True
        return seen, False
    finally:
        consumer.close()


async def test_delivery_cancelled_mid_transaction_is_aborted_at_close(kafka: KafkaServer) -> None:
    """A delivery cancelled while it produces (at shutdown) leaves its Kafka
    transaction open; close() aborts it, so read_committed readers are not held
    at the last stable offset until transaction.timeout.ms (60 s)."""
    prefix = unique_prefix("k")
    config = KafkaSinkConfig(
        bootstrap_servers=kafka.bootstrap,
        prefix=prefix,
        checkpoint_topic=f"{prefix}.checkpoints",
        delivery_timeout=10,
        transaction_bytes=2**20,
        transaction_interval=60,
    )
    sink = KafkaSink(config, SinkContext(slot="s", destination="cancel", tables=("public.t",)))
    await sink.open()
    try:
        task = asyncio.create_task(sink.deliver([_event(0x3000, i) for i in range(40_000)]))
        producer = sink._producer
        assert producer is not None
        # The first transaction committed and the second one's records are out.
        await wait_for(
            lambda: sink.checkpoint is not None and len(producer) > 0,
            within=60,
            what="a second transaction producing",
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        committed = parse_event_id(sink.checkpoint or "")[1] + 1
    finally:
        await sink.close()
    seen, at_end = await asyncio.to_thread(
        _read_committed_to_end, kafka.bootstrap, f"{prefix}.public.t", 30.0
    )
    assert at_end, "an open transaction holds read_committed readers back"
    assert seen == committed < 40_000


async def test_placed_batches_share_one_transaction_until_caught_up(kafka: KafkaServer) -> None:
    # The scheduler places batches one after another: they join the open
    # transaction (one commit, one checkpoint) until it says it has nothing more.
    prefix = unique_prefix("k")
    sink = _exactly_once_sink(kafka, prefix, "placed", transaction_interval=60)
    await sink.open()
    try:
        durables = [
            await sink.place([_event(0x4000, 10 * b + i) for i in range(10)]) for b in range(3)
        ]
        assert not any(d.done() for d in durables), "committed before the scheduler caught up"
        sink.caught_up()
        await asyncio.wait_for(asyncio.gather(*durables), 30)
        assert sink.checkpoint == format_event_id(0x4000, 29)
        assert (sink.transactions, sink.transaction_events) == (1, 30)
    finally:
        await sink.close()
    marks = await asyncio.to_thread(
        _committed_checkpoints, kafka.bootstrap, f"{prefix}.checkpoints"
    )
    assert marks == [format_event_id(0x4000, 29)]
    reader = Reader(kafka.bootstrap, prefix)
    try:
        await reader.until(30)
        await asyncio.to_thread(reader.read, 1.0, 3.0)
        assert [s.envelope["record"]["id"] for s in reader.seen] == list(range(30))
    finally:
        reader.close()


async def test_placed_batch_is_committed_after_the_interval(kafka: KafkaServer) -> None:
    # Nobody says "caught up" (more was expected): the transaction still ends
    # once it has been open transaction_interval.
    prefix = unique_prefix("k")
    sink = _exactly_once_sink(kafka, prefix, "interval", transaction_interval=0.2)
    await sink.open()
    try:
        durable = await sink.place([_event(0x4100, i) for i in range(5)])
        await asyncio.wait_for(durable, 30)
        assert sink.checkpoint == format_event_id(0x4100, 4)
    finally:
        await sink.close()


async def test_batches_of_a_failed_transaction_are_placed_again_first(kafka: KafkaServer) -> None:
    # A record the producer refuses aborts the open transaction: the batch
    # placed before it in that transaction fails too, and no batch may overtake
    # it (the checkpoint of a later one would claim it) until it is placed again.
    prefix = unique_prefix("k")
    sink = _exactly_once_sink(kafka, prefix, "redo", transaction_interval=60)
    first = [_event(0x4200, i) for i in range(5)]
    huge = dataclasses.replace(_event(0x4200, 5), body=b'{"x":"' + b"y" * 2_000_000 + b'"}')
    later = [_event(0x4200, i) for i in range(6, 9)]
    await sink.open()
    try:
        durable = await sink.place(first)
        with pytest.raises(PoisonEvent):
            await sink.place([huge])
        with pytest.raises(SinkUnavailable, match="the transaction was aborted"):
            await durable
        overtaking = re.escape(format_event_id(0x4200, 6)) + " waits"
        with pytest.raises(SinkUnavailable, match=overtaking):
            await sink.place(later)
        again = [await sink.place(first), await sink.place(later)]
        sink.caught_up()
        await asyncio.wait_for(asyncio.gather(*again), 30)
        assert sink.checkpoint == format_event_id(0x4200, 8)
    finally:
        await sink.close()
    reader = Reader(kafka.bootstrap, prefix)
    try:
        await reader.until(8)
        await asyncio.to_thread(reader.read, 1.0, 3.0)
        got = [s.envelope["record"]["id"] for s in reader.seen]
        assert got == [0, 1, 2, 3, 4, 6, 7, 8]  # the aborted copy of 0..4 is never read
    finally:
        reader.close()
