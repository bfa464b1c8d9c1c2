"""One policy for a batch with permanent and transient failures, in every sink that
sees per-event outcomes (sinks/base.py): any transient failure makes the batch
transient (retried whole), permanent only when every failure is.

Each sink's own outcome step is fed the per-event results its client library
would return, without a server (the webhook sink's is tested against a real
receiver in test_webhook_sink.py).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika.exceptions
import confluent_kafka
import nats.js.errors
import orjson
import pytest
import redis.exceptions
from nats.aio.msg import Msg

from walrelay.config import (
    KafkaSinkConfig,
    NatsSinkConfig,
    PostgresSinkConfig,
    RabbitMQSinkConfig,
    RedisSinkConfig,
)
from walrelay.errors import PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event, format_event_id
from walrelay.sinks import postgres as postgres_mod
from walrelay.sinks.common import batch_error
from walrelay.sinks.kafka import KafkaSink, _Record
from walrelay.sinks.nats import NatsSink, _Acks, _Batch
from walrelay.sinks.postgres import PostgresSink
from walrelay.sinks.rabbitmq import RabbitMQSink
from walrelay.sinks.redis_streams import RedisStreamsSink

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def event(seq: int) -> Event:
    body = orjson.dumps({"id": format_event_id(1, seq), "key": {"id": seq}})
    return Event(1, seq, "insert", "public.t", (f"public.t\x1f{seq}",), body, 1, T0)


# -- the policy itself ---------------------------------------------------------------


def test_any_transient_failure_makes_the_batch_transient() -> None:
    error = batch_error(
        [
            PoisonEvent("too large"),
            SinkError("busy", retry_after=3.0),
            SinkUnavailable("timeout", retry_after=1.0),
        ],
        10,
        "records",
    )
    assert isinstance(error, SinkUnavailable) and not error.permanent
    assert error.retry_after == 3.0  # the longest any transient failure asked for
    assert str(error).startswith("3 of 10 records failed; first: busy")


def test_only_permanent_failures_make_the_batch_permanent() -> None:
    error = batch_error([PoisonEvent("a"), SinkError("b", permanent=True)], 5, "records")
    assert error.permanent and not isinstance(error, PoisonEvent)
    poison = batch_error([PoisonEvent("a"), PoisonEvent("b")], 5, "records")
    assert isinstance(poison, PoisonEvent)
    single = SinkError("only", permanent=True)
    assert batch_error([single], 5, "records") is single


# -- Kafka ------------------------------------------------------------------------------


def test_kafka_mixed_delivery_reports_are_transient() -> None:
    sink = KafkaSink(KafkaSinkConfig(bootstrap_servers="127.0.0.1:1", mode="at_least_once"))
    too_large = confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
    timed_out = confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT)

    def record(seq: int) -> _Record:
        return _Record("t", b"k", b"v" * 10, [], format_event_id(1, seq))

    mixed = sink._combine([(too_large, record(1)), (timed_out, record(2))], 3)
    assert isinstance(mixed, SinkUnavailable) and not mixed.permanent
    permanent = sink._combine([(too_large, record(1)), (too_large, record(2))], 3)
    assert isinstance(permanent, PoisonEvent)


class _Producer:
    """Stands in for confluent_kafka.Producer: refuses records of ``too_large``
    bytes at produce(), reports a timeout for the key ``"slow"``, else success."""

    def __init__(self, too_large: int, slow_key: bytes = b'"slow"') -> None:
        self.too_large, self.slow_key = too_large, slow_key
        self.produced: list[bytes | None] = []

    def produce(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any
    ) -> None:
        if len(value) >= self.too_large:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
            )
        self.produced.append(key)
        msg = _Message(topic, key, value, headers)
        if key == self.slow_key:
            on_delivery(confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT), msg)
        else:
            on_delivery(None, msg)

    def poll(self, timeout: float) -> int:
        return 0


class _Message:
    """Stands in for confluent_kafka.Message in a delivery report."""

    def __init__(self, topic: str, key: bytes, value: bytes, headers: Any) -> None:
        self._topic, self._key, self._value, self._headers = topic, key, value, headers

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> Any:
        return self._headers


def _kafka_event(seq: int, key: bytes, size: int = 10) -> Event:
    e = event(seq)
    return Event(e.commit_lsn, e.seq, e.op, e.table, e.keys, b"x" * size, 1, T0, key_json=key)


async def test_kafka_record_refused_at_produce_does_not_hold_back_the_batch() -> None:
    sink = KafkaSink(KafkaSinkConfig(bootstrap_servers="127.0.0.1:1", mode="at_least_once"))
    producer = _Producer(too_large=100)
    sink._producer = producer  # type: ignore[assignment]
    sink._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    sink._known_topics.add("walrelay.public.t")
    batch = [
        _kafka_event(0, b'"1"'),
        _kafka_event(1, b'"2"', size=100),  # too large: refused by produce()
        _kafka_event(2, b'"slow"'),  # times out: transient
        _kafka_event(3, b'"4"'),
    ]
    with pytest.raises(SinkUnavailable, match="2 of 4 records failed") as info:
        await sink._deliver_idempotent(batch)
    assert not info.value.permanent
    assert producer.produced == [b'"1"', b'"slow"', b'"4"']  # the rest were still sent
    with pytest.raises(PoisonEvent):  # only the refused record fails: permanent
        await sink._deliver_idempotent([batch[0], batch[1], batch[3]])
    sink._executor.shutdown()


# -- NATS -------------------------------------------------------------------------------


async def test_nats_mixed_acks_are_transient() -> None:
    """Acknowledgements as JetStream sends them to the sink's inbox: stored, a
    duplicate, no stream for the subject (503 no responders, permanent), an
    API error (503, transient)."""
    sink = NatsSink(NatsSinkConfig(servers=["nats://127.0.0.1:1"]))
    acks = _Acks("_INBOX.test", nats.js.errors)

    async def batch(*answers: tuple[bytes, dict[str, str] | None]) -> _Batch:
        b = acks.batch()
        replies = [b.reply(str(i), "s") for i in range(len(answers))]
        for reply, (data, headers) in zip(replies, answers, strict=True):
            await acks.on_ack(Msg(None, subject=reply, data=data, headers=headers))  # type: ignore[arg-type]
        assert b.answered.done()
        return b

    stored = (b'{"stream":"S","seq":1}', None)
    duplicate = (b'{"stream":"S","seq":1,"duplicate":true}', None)
    no_stream = (b"", {"Status": "503"})
    unavailable = (b'{"error":{"code":503,"err_code":10039,"description":"no leader"}}', None)
    with pytest.raises(SinkUnavailable, match="2 of 4 publishes failed") as info:
        sink._settle(await batch(stored, duplicate, no_stream, unavailable))
    assert not info.value.permanent
    with pytest.raises(SinkError) as permanent:
        sink._settle(await batch(stored, no_stream))
    assert permanent.value.permanent
    sink._settle(await batch(stored, duplicate, duplicate))
    assert sink.duplicates == 3


# -- Redis ------------------------------------------------------------------------------


async def test_redis_mixed_xadd_results_are_transient() -> None:
    sink = RedisStreamsSink(RedisSinkConfig(url="redis://127.0.0.1:1/0"))
    sent = [(event(i), "s") for i in range(4)]
    wrongtype = redis.exceptions.ResponseError("WRONGTYPE Operation against a key")
    oom = redis.exceptions.ResponseError("OOM command not allowed")
    with pytest.raises(SinkUnavailable, match="2 of 3 XADDs failed") as info:
        await sink._settle(sent[:3], [b"1-0", wrongtype, oom])
    assert not info.value.permanent
    with pytest.raises(SinkError) as permanent:
        await sink._settle(sent[:3], [b"1-0", wrongtype, None])  # None: NOMKSTREAM, no stream
    assert permanent.value.permanent
    # Replays ("equal or smaller than the top item") are checked against the
    # stream itself: tests/integration/test_sink_redis.py.


# -- RabbitMQ ---------------------------------------------------------------------------


def test_rabbitmq_mixed_confirms_are_transient() -> None:
    sink = RabbitMQSink(RabbitMQSinkConfig(url="amqp://127.0.0.1:1/"))
    # What aio-pika raises for a returned (unroutable) message; its constructor wants
    # the broker's frames, which the sink never looks at.
    unroutable = aio_pika.exceptions.PublishError.__new__(aio_pika.exceptions.PublishError)
    publishes = [(format_event_id(1, i), "x", "public.t.insert") for i in range(3)]
    with pytest.raises(SinkUnavailable, match="2 of 3 publishes failed") as info:
        sink._settle(publishes, [None, unroutable, TimeoutError()])
    assert not info.value.permanent
    with pytest.raises(SinkError) as permanent:
        sink._settle(publishes, [None, unroutable, unroutable])
    assert permanent.value.permanent


# -- PostgreSQL -------------------------------------------------------------------------


class _Conn:
    closed = False

    async def close(self) -> None:
        self.closed = True


def _postgres(ordered: bool, failing: dict[int, SinkError]) -> tuple[PostgresSink, list[int]]:
    """A sink whose per-transaction apply step fails for the events in ``failing``."""
    sink = PostgresSink(PostgresSinkConfig(dsn="dbname=none", ordered=ordered))
    applied: list[int] = []

    async def apply(conn: Any, events: Sequence[Event]) -> None:
        for e in events:
            if e.seq in failing:
                raise postgres_mod._BadEvent(e, failing[e.seq])
        applied.extend(e.seq for e in events)

    sink._apply = apply  # type: ignore[method-assign]
    sink._idle.append(_Conn())  # type: ignore[arg-type]
    return sink, applied


async def test_postgres_unordered_applies_the_good_events_and_reports_transient() -> None:
    failing = {1: PoisonEvent("check violated"), 3: SinkError("target table missing")}
    sink, applied = _postgres(ordered=False, failing=failing)
    with pytest.raises(SinkError, match="2 of 5 events failed") as info:
        await sink.deliver([event(i) for i in range(5)])
    assert not info.value.permanent
    assert applied == [0, 2, 4]  # recorded: the retry skips them


async def test_postgres_unordered_only_permanent_is_permanent() -> None:
    sink, applied = _postgres(ordered=False, failing={1: PoisonEvent("check violated")})
    with pytest.raises(PoisonEvent):
        await sink.deliver([event(i) for i in range(3)])
    assert applied == [0, 2]


async def test_postgres_ordered_stops_at_the_first_bad_event() -> None:
    failing = {1: PoisonEvent("check violated"), 3: SinkError("target table missing")}
    sink, applied = _postgres(ordered=True, failing=failing)
    with pytest.raises(PoisonEvent):
        await sink.deliver([event(i) for i in range(5)])
    assert applied == [0]  # nothing may be applied before the bad event
