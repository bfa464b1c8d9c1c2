"""Redis Streams sink against a real redis-server and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

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
from tests.integration.support import make_config, running_engine, stream_entries, wait_for
from walrelay.config import RedisSinkConfig
from walrelay.errors import ConfigError, SinkError
from walrelay.model import Event, format_event_id
from walrelay.sinks.base import SinkContext
from walrelay.sinks.redis_streams import RedisStreamsSink, _routed_fields, entry_id
from walrelay.testing.checker import check
from walrelay.testing.servers import RedisServer

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    # appendfsync always: an acknowledged XADD survives the SIGKILL below.
    with RedisServer(appendfsync="always") as srv:
        yield srv


class StreamsReader:
    """XRANGE over every stream ``<prefix>:*``, continuing after the last entry read."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.last: dict[str, str] = {}
        self.seen: list[Seen] = []

    async def read(self) -> int:
        client = aioredis.Redis.from_url(self.url)
        try:
            async for raw in client.scan_iter(match=f"{self.prefix}:*"):
                stream = raw.decode()
                start = f"({self.last[stream]}" if stream in self.last else "-"
                for entry_id_raw, fields in stream_entries(await client.xrange(stream, start, "+")):
                    eid = entry_id_raw.decode()
                    envelope = orjson.loads(fields[b"body"])
                    assert fields[b"id"].decode() == envelope["id"]
                    assert fields[b"op"].decode() == envelope["op"]
                    self.seen.append(Seen(stream, envelope, eid))
                    self.last[stream] = eid
        except (redis.exceptions.ConnectionError, OSError):
            pass  # the server is down
        finally:
            await client.aclose()
        return len(self.seen)

    async def until(self, count: int, within: float = 60.0) -> None:
        async def enough() -> bool:
            return await self.read() >= count

        await wait_for(enough, within=within, what=f"{count} entries in {self.prefix}:*")


def redis_dest(server: RedisServer, prefix: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": f"redis-{prefix}",
        "retry": retry_fast(),
        "sink": {"type": "redis", "url": server.url, "prefix": prefix, "timeout": 2, **sink},
    }


async def test_every_op(server: RedisServer, db: str) -> None:
    every_op_setup(db)
    prefix = unique_prefix("r")
    config = make_config(db, EVERY_OP_TABLES, [redis_dest(server, prefix)])
    reader = StreamsReader(server.url, prefix)
    async with running_engine(config):
        every_op_run(db)
        await reader.until(EVERY_OP_COPIES)
    assert await reader.read() == EVERY_OP_COPIES
    check_every_op(reader.seen)
    assert {s.name for s in reader.seen} == {
        f"{prefix}:public.items",
        f"{prefix}:public.full_ident",
        f"{prefix}:messages",
    }
    for s in reader.seen:  # the entry id is the event id in Redis's form
        lsn_hex, seq = s.envelope["id"].split("/")
        assert s.msg_id == f"{int(lsn_hex, 16)}-{int(seq)}"


async def test_per_key_order(server: RedisServer, db: str) -> None:
    per_key_setup(db)
    prefix = unique_prefix("r")
    dest = redis_dest(server, prefix, batch_size=20)
    dest["max_in_flight"] = 100  # not used: explicit ids need exact order per stream
    config = make_config(db, ["public.counters"], [dest])
    reader = StreamsReader(server.url, prefix)
    async with running_engine(config) as engine:
        assert engine.destinations[dest["name"]].ordered
        expected = per_key_run(db)
        await reader.until(len(expected))
    report = check(expected, counter_deliveries(reader.seen))
    assert report.ok(), report.summary()


async def test_server_killed_and_restarted(server: RedisServer, db: str) -> None:
    ledger_setup(db)
    prefix = unique_prefix("r")
    dest = redis_dest(server, prefix, batch_size=50, maxlen=100_000)
    config = make_config(db, [LEDGER_TABLE], [dest])
    reader = StreamsReader(server.url, prefix)
    async with running_engine(config) as engine:
        destination = engine.destinations[dest["name"]]
        assert isinstance(destination.sink, RedisStreamsSink)  # no ledger in front
        writer = LedgerWriter(db).start()
        await reader.until(200)
        await asyncio.to_thread(server.kill)
        assert writer.committed < writer.transactions, "killed after the stream ended"
        await wait_for(lambda: destination.failures_total > 0, what="a failed delivery")
        # Deliberate: keep the server down a while (more failed attempts) before restart.
        await asyncio.sleep(0.5)
        await server.arestart()
        await asyncio.to_thread(writer.join)
        await reader.until(writer.events, within=120)
    assert await reader.read() == writer.events
    check_ledger(writer, reader.seen, allow_duplicates=False)


def _event(lsn: int, seq: int, table: str = "public.t") -> Event:
    body = orjson.dumps(
        {"id": format_event_id(lsn, seq), "op": "insert", "table": table, "record": {"id": seq}}
    )
    return Event(lsn, seq, "insert", table, (str(seq),), body, 1, datetime.now(UTC))


async def test_replayed_ids_are_rejected_by_redis(server: RedisServer) -> None:
    prefix = unique_prefix("r")
    sink = RedisStreamsSink(RedisSinkConfig(url=server.url, prefix=prefix))
    await sink.open()
    try:
        await sink.deliver([_event(0x2000, i) for i in range(5)])
        await sink.deliver([_event(0x2000, i) for i in range(3, 8)])  # a retried/replayed batch
        assert sink.replayed == 2
    finally:
        await sink.close()
    reader = StreamsReader(server.url, prefix)
    assert await reader.read() == 8
    assert [s.msg_id for s in reader.seen] == [entry_id(_event(0x2000, i)) for i in range(8)]


async def test_an_id_below_the_top_that_the_stream_lacks_is_not_a_replay(
    server: RedisServer,
) -> None:
    """Redis refuses any id at or below a stream's top: only one the stream
    holds is a replay. One it lacks (an earlier XADD failed while a later one
    went in) must fail loudly, never count as delivered."""
    prefix = unique_prefix("r")
    sink = RedisStreamsSink(RedisSinkConfig(url=server.url, prefix=prefix))
    await sink.open()
    try:
        await sink.deliver([_event(0x2100, 0), _event(0x2100, 5)])  # the gap: 1 to 4
        with pytest.raises(SinkError, match=r"does not hold it") as exc:
            await sink.deliver([_event(0x2100, i) for i in range(6)])
        assert exc.value.permanent
        assert "2 of 6" not in str(exc.value) and "4 of 6" in str(exc.value)
        assert sink.replayed == 0  # nothing counted as delivered in a failed batch
    finally:
        await sink.close()
    reader = StreamsReader(server.url, prefix)
    assert await reader.read() == 2


async def test_missing_stream_without_auto_create(server: RedisServer) -> None:
    prefix = unique_prefix("r")
    sink = RedisStreamsSink(
        RedisSinkConfig(url=server.url, prefix=prefix, auto_create=False),
        SinkContext(tables=("public.t",)),
    )
    with pytest.raises(ConfigError, match=rf"stream {prefix}:public\.t .*does not exist"):
        await sink.open()
    # A stream that is not known at start (here: no tables given) fails at delivery.
    sink = RedisStreamsSink(RedisSinkConfig(url=server.url, prefix=prefix, auto_create=False))
    await sink.open()
    try:
        with pytest.raises(SinkError, match=rf"stream {prefix}:public\.t does not exist") as exc:
            await sink.deliver([_event(0x3000, 0)])
        assert exc.value.permanent
    finally:
        await sink.close()


async def test_outbox_events_arrive_on_routed_streams(server: RedisServer, db: str) -> None:
    """Mirror of test_outbox's Kafka test: route.topic is the stream, the payload the
    ``body`` field, aggregate_id the ``key`` field, route headers further fields."""
    from tests.integration.support import execute
    from tests.integration.test_outbox import EXPECTED_PAYLOADS, init, make, write_orders

    await init(db)
    execute(db, "create table orders (id int primary key, total numeric)")
    prefix = unique_prefix("r")
    dest = redis_dest(server, prefix)
    dest["router"] = {"type": "outbox", "topic": prefix + ".{routed_by}.events"}
    config = make(db, [dest])
    async with running_engine(config) as engine:
        expected = await write_orders(db)
        await wait_for(
            lambda: engine.tracker.pending_events() == 0 and engine.stats.events_in >= 4,
            within=60,
            what="the events delivered to Redis",
        )
    client = aioredis.Redis.from_url(server.url)
    try:
        entries = {
            stream: stream_entries(await client.xrange(f"{prefix}.{stream}"))
            for stream in ("order.events", "invoice.events")
        }
        assert [k async for k in client.scan_iter(match=f"{prefix}:*")] == []  # no table streams
    finally:
        await client.aclose()
    got = [
        (stream, fields[b"key"].decode())
        for stream, items in entries.items()
        for _, fields in items
    ]
    assert sorted(got, key=lambda sk: [k for _, k in expected].index(sk[1])) == expected
    assert [f[b"key"] for _, f in entries["order.events"]] == [b"42", b"43", b"44"]
    for items in entries.values():
        for eid, fields in items:
            key = fields[b"key"].decode()
            assert orjson.loads(fields[b"body"]) == EXPECTED_PAYLOADS[key]  # payload as JSON
            assert fields[b"event_type"] in (b"OrderCreated", b"InvoiceSent")
            assert fields[b"aggregate_type"] in (b"order", b"invoice")
            assert b"tombstone" not in fields
            lsn_hex, seq = fields[b"id"].decode().split("/")
            assert eid.decode() == f"{int(lsn_hex, 16)}-{int(seq)}"  # the explicit entry id


async def test_routed_tombstone(server: RedisServer) -> None:
    from walrelay.model import Route

    prefix = unique_prefix("r")
    sink = RedisStreamsSink(RedisSinkConfig(url=server.url, prefix=prefix))
    await sink.open()
    try:
        event = _event(0x4000, 0, "public.outbox")
        event.route = Route(f"{prefix}.gone", "9", None, (("id", "spoofed"), ("h", "v")))
        await sink.deliver([event])
        await sink.deliver([event])  # replayed: rejected by Redis, as unrouted events
        assert sink.replayed == 1
    finally:
        await sink.close()
    client = aioredis.Redis.from_url(server.url)
    try:
        [(_, fields)] = stream_entries(await client.xrange(f"{prefix}.gone"))
    finally:
        await client.aclose()
    assert fields == {
        b"id": event.id.encode(),
        b"op": b"insert",
        b"table": b"public.outbox",
        b"key": b"9",
        b"body": b"",
        b"tombstone": b"1",
        b"h": b"v",
    }


@pytest.mark.parametrize(
    ("maxlen", "approximate", "auto_create"),
    [(None, True, True), (1000, True, False), (7, False, True)],
)
def test_commands_are_the_bytes_redis_py_would_send(
    maxlen: int | None, approximate: bool, auto_create: bool
) -> None:
    """The sink packs its XADDs itself (redis-py's per-argument packing was half
    its CPU): byte for byte what ``pipeline.xadd`` packs, for the plain and the
    routed fields, non-ASCII names and bodies included."""
    from redis.asyncio.connection import Connection

    from walrelay.model import Route

    config = RedisSinkConfig(
        url="redis://127.0.0.1:1",
        maxlen=maxlen,
        approximate_maxlen=approximate,
        auto_create=auto_create,
    )
    sink = RedisStreamsSink(config)
    plain = _event(0x5000, 3, "public.tä")
    routed = _event(0x5000, 4, "public.outbox")
    routed.route = Route("o.évents", "k", b'{"a":"\xc3\xa9"}', (("h", "v"), ("op", "x")))
    wire: list[bytes] = []
    sink._packer.entry(
        wire, "w:public.tä", entry_id(plain), plain.id, "insert", plain.table, plain.body
    )
    sink._packer.command(wire, "o.évents", entry_id(routed), _routed_fields(routed))

    pipe = aioredis.Redis().pipeline(transaction=False)
    for stream, fields, eid in (
        (
            "w:public.tä",
            {"id": plain.id, "op": "insert", "table": plain.table, "body": plain.body},
            entry_id(plain),
        ),
        ("o.évents", _routed_fields(routed), entry_id(routed)),
    ):
        pipe.xadd(
            stream,
            fields,  # type: ignore[arg-type]
            id=eid,
            maxlen=maxlen,
            approximate=approximate,
            nomkstream=not auto_create,
        )
    expected = Connection().pack_commands([args for args, _ in pipe.command_stack])
    assert b"".join(wire) == b"".join(expected)
