"""Output formats on the wire: CloudEvents read back by the official CloudEvents
SDK from a real aiohttp receiver and a real Kafka consumer (structured and
binary mode); Kafka tombstones and key formats against the real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from tests.integration.support import (
    current_lsn,
    execute,
    make_config,
    running_engine,
    slot_state,
    wait_for,
    wait_for_sync,
)
from walrelay.sinks.memory import MemorySink
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.pgcluster import free_port
from walrelay.testing.servers import KafkaServer

pytestmark = pytest.mark.servers

SETUP = (
    "create table items (id int primary key, name text, sku text not null)",
    "insert into items values (1, 'one', 'A-1'), (2, 'two', 'A-2')",
)
WORKLOAD = (
    "insert into items values (3, 'three', 'A-3')",
    "update items set name = 'uno' where id = 1",
    "update items set id = 20 where id = 2",
    "delete from items where id = 3",
    "select pg_logical_emit_message(true, 'audit', 'hello')",
)
# 2 snapshot rows + 5 changes.
EVENTS = 7


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer() as server:
        wait_for_sync(
            lambda: transactions_ready(server.bootstrap),
            within=90,
            what="Kafka's transaction coordinator",
        )
        yield server


def transactions_ready(bootstrap: str) -> bool:
    """Can a transactional producer start? On a busy machine the broker answers
    metadata requests a while before its transaction coordinator has loaded."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "test-ready"})
    try:
        producer.init_transactions(10)
    except KafkaException as exc:
        if exc.args[0].retriable():
            return False
        raise
    return True


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


class RawReader:
    """A read_committed consumer of every topic starting with ``prefix.``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix + "."
        self.consumer = reading_consumer(bootstrap)
        self.assigned: set[tuple[str, int]] = set()
        self.records: list[Record] = []

    def read(self) -> int:
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
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.05)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    continue
                raise AssertionError(f"consumer error: {err}")
            topic = msg.topic()
            assert topic is not None
            headers: dict[str, bytes] = {}
            for name, value in msg.headers() or []:  # type: ignore[str-unpack]
                if isinstance(value, bytes):
                    headers[name] = value
            self.records.append(Record(topic, msg.key(), msg.value(), headers))
        return len(self.records)

    async def until(self, count: int) -> None:
        async def enough() -> bool:
            return await asyncio.to_thread(self.read) >= count

        await wait_for(enough, within=60, what=f"{count} records in Kafka")


def kafka_dest(kafka: KafkaServer, name: str, prefix: str, **extra: Any) -> dict[str, Any]:
    sink = {
        "type": "kafka",
        "bootstrap_servers": kafka.bootstrap,
        "prefix": prefix,
        "checkpoint_topic": f"{prefix}.checkpoints",
        "delivery_timeout": 5,
        **extra.pop("sink", {}),
    }
    return {"name": name, "sink": sink, **extra}


class Receiver:
    """An aiohttp server keeping every request's headers and body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    peer = Receiver()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def check_cloudevent(event: Any, slot: str) -> dict[str, Any]:
    """What every walrelay CloudEvent holds; returns its data (walrelay's envelope)."""
    data = event.get_data()
    assert isinstance(data, dict)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == data["id"]
    assert event.get_source() == f"/walrelay/{slot}"
    assert event.get_time() is not None
    assert event.get_time().isoformat().startswith(data["committed_at"][:19])
    if data["op"] == "message":
        assert event.get_type() == "walrelay.message"
        assert event.get_subject() == data["prefix"]
    else:
        schema, table = data["table"].split(".")
        assert event.get_type() == f"walrelay.{schema}.{table}.{data['op']}"
        assert orjson.loads(event.get_subject()) == data["key"]
    return data


async def test_cloudevents_over_webhook_both_modes(db: str, receiver: Receiver) -> None:
    execute(db, *SETUP)
    dests = [
        {
            "name": f"ce-{mode}",
            "sink": {"type": "webhook", "url": receiver.url + f"?mode={mode}"},
            "format": "cloudevents",
            "cloudevents": {"mode": mode},
        }
        for mode in ("structured", "binary")
    ]
    cfg = make_config(db, ["public.items"], dests, slot="ce_hook")
    async with running_engine(cfg):
        execute(db, *WORKLOAD)
        await wait_for(lambda: len(receiver.requests) >= 2 * EVENTS, what="webhook POSTs")
    by_mode: dict[str, list[dict[str, Any]]] = {"structured": [], "binary": []}
    for headers, body in receiver.requests:
        lowered = {k.lower(): v for k, v in headers.items()}
        binary = "ce-id" in lowered
        if binary:
            assert lowered["content-type"] == "application/json"
            assert orjson.loads(body)["id"] == lowered["ce-id"]  # the body is the envelope
        else:
            assert lowered["content-type"] == "application/cloudevents+json"
        event = ce_http.from_http(ce_http.HTTPMessage(lowered, body), JSONFormat())
        by_mode["binary" if binary else "structured"].append(check_cloudevent(event, "ce_hook"))
    for mode, datas in by_mode.items():
        assert sorted(d["op"] for d in datas) == sorted(
            ["read", "read", "insert", "update", "update", "delete", "message"]
        ), mode
    assert sorted(orjson.dumps(d) for d in by_mode["structured"]) == sorted(
        orjson.dumps(d) for d in by_mode["binary"]
    )


async def test_cloudevents_over_kafka_both_modes(kafka: KafkaServer, db: str) -> None:
    execute(db, *SETUP)
    prefix = f"ce{uuid.uuid4().hex[:8]}"
    dests = [
        kafka_dest(
            kafka,
            f"ce-{mode}",
            f"{prefix}.{mode}",
            format="cloudevents",
            cloudevents={"mode": mode},
        )
        for mode in ("structured", "binary")
    ]
    cfg = make_config(db, ["public.items"], dests, slot="ce_kafka")
    reader = RawReader(kafka.bootstrap, prefix)
    try:
        async with running_engine(cfg):
            execute(db, *WORKLOAD)
            await reader.until(2 * EVENTS)
    finally:
        reader.consumer.close()
    seen: dict[str, list[str]] = {"structured": [], "binary": []}
    for rec in reader.records:
        mode = rec.topic.split(".")[1]
        assert rec.value is not None
        message = ce_kafka.KafkaMessage(headers=rec.headers, key=rec.key, value=rec.value)
        event = ce_kafka.from_kafka(message, JSONFormat())
        data = check_cloudevent(event, "ce_kafka")
        if mode == "binary":
            assert rec.headers["content-type"] == b"application/json"
            assert rec.headers["ce_id"] == data["id"].encode()
        else:
            assert rec.headers["content-type"] == b"application/cloudevents+json"
            assert not any(k.startswith("ce_") for k in rec.headers)
        seen[mode].append(data["op"])
    for ops in seen.values():
        assert sorted(ops) == sorted(
            ["read", "read", "insert", "update", "update", "delete", "message"]
        )


async def test_kafka_tombstones_and_key_formats(kafka: KafkaServer, db: str) -> None:
    execute(db, *SETUP)
    prefix = f"tomb{uuid.uuid4().hex[:8]}"
    dests = [
        kafka_dest(
            kafka,
            "dbz",
            f"{prefix}.dbz",
            format="debezium",
            sink={"tombstones": True, "key_format": "debezium", "partitions": 1},
            transaction_metadata=True,
        ),
        kafka_dest(
            kafka,
            "sku",
            f"{prefix}.sku",
            sink={"key_format": "column:sku", "mode": "at_least_once"},
        ),
    ]
    cfg = make_config(db, ["public.items"], dests, slot="tomb")
    reader = RawReader(kafka.bootstrap, prefix)
    try:
        async with running_engine(cfg):
            execute(db, *WORKLOAD)
            # dbz: 7 events + a tombstone after the delete + one for the old key of
            # the key-changing update + BEGIN/END of the 5 transactions; sku: 7 events.
            await reader.until(EVENTS + 2 + 10 + EVENTS)
    finally:
        reader.consumer.close()
    dbz = [r for r in reader.records if r.topic == f"{prefix}.dbz.public.items"]
    ops = [
        (orjson.loads(r.value)["op"], r.key) if r.value is not None else ("tombstone", r.key)
        for r in dbz
    ]
    assert ops == [
        ("r", b'{"id":1}'),
        ("r", b'{"id":2}'),
        ("c", b'{"id":3}'),
        ("u", b'{"id":1}'),
        ("u", b'{"id":20}'),
        ("tombstone", b'{"id":2}'),  # the old key of the key-changing update
        ("d", b'{"id":3}'),
        ("tombstone", b'{"id":3}'),
    ]
    # column:sku is the column's raw value; a delete's old row under REPLICA
    # IDENTITY DEFAULT has only the primary key, so its key is null.
    sku = [r for r in reader.records if r.topic == f"{prefix}.sku.public.items"]
    by_op = sorted((orjson.loads(r.value or b"{}")["op"], r.key or b"") for r in sku)
    assert by_op == [
        ("delete", b""),
        ("insert", b"A-3"),
        ("read", b"A-1"),
        ("read", b"A-2"),
        ("update", b"A-1"),
        ("update", b"A-2"),
    ]
    tx_records = [r for r in reader.records if r.topic == f"{prefix}.dbz.transaction"]
    tx = [orjson.loads(r.value or b"{}") for r in tx_records]
    assert [t["status"] for t in tx] == ["BEGIN", "END"] * 5
    assert [t["event_count"] for t in tx[1::2]] == [1, 1, 1, 1, 1]
    assert tx[-1]["data_collections"] == [{"data_collection": "message", "event_count": 1}]
    message = [r for r in reader.records if r.topic == f"{prefix}.dbz.messages"]
    assert [orjson.loads(r.key or b"null") for r in message] == [{"prefix": "audit"}]
    assert orjson.loads(message[0].value or b"{}")["op"] == "m"


async def test_transaction_metadata_is_delivered_and_lets_the_slot_advance(db: str) -> None:
    execute(db, *SETUP)
    execute(db, "create table notes (id int primary key, body text)")
    sink = MemorySink()
    dest = {
        "name": "tx",
        "sink": {"type": "stdout"},
        "format": "debezium",
        "transaction_metadata": True,
        "snapshot": "never",
    }
    cfg = make_config(db, ["public.items", "public.notes"], [dest], slot="txmeta")
    async with running_engine(cfg, sink_factory=lambda _d: sink):
        with psycopg.connect(db) as conn:  # one transaction over two tables
            conn.execute("insert into items values (7, 'seven', 'A-7'), (8, 'eight', 'A-8')")
            conn.execute("insert into notes values (1, 'n')")
        after = current_lsn(db)
        await wait_for(lambda: any(e.op == "end" for e in sink.delivered), what="the end event")
        # begin/end are counted like any event: the slot moves past the transaction.
        await wait_for(lambda: slot_state(db, "txmeta")["confirmed"] >= after, what="confirm")
    values = [orjson.loads(e.body) for e in sink.delivered]
    assert [v.get("status") or v["op"] for v in values] == ["c", "c", "c", "BEGIN", "END"]
    tx_id = values[3]["id"]
    assert values[4] == {
        "status": "END",
        "id": tx_id,
        "event_count": 3,
        "data_collections": [
            {"data_collection": "public.items", "event_count": 2},
            {"data_collection": "public.notes", "event_count": 1},
        ],
        "ts_ms": values[3]["ts_ms"],
    }
    assert [v["transaction"] for v in values[:3]] == [
        {"id": tx_id, "total_order": 1, "data_collection_order": 1},
        {"id": tx_id, "total_order": 2, "data_collection_order": 2},
        {"id": tx_id, "total_order": 3, "data_collection_order": 1},
    ]
