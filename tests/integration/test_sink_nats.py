"""NATS JetStream sink against a real nats-server -js and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
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
from walrelay.config import NatsSinkConfig
from walrelay.errors import ConfigError, SinkError, SinkUnavailable
from walrelay.sinks.base import SinkContext
from walrelay.sinks.nats import NatsSink
from walrelay.testing.checker import check
from walrelay.testing.servers import NatsServer

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer() as srv:
        yield srv


class StreamReader:
    """Reads a stream message by message (sequence order), picking up where it left."""

    def __init__(self, url: str, stream: str) -> None:
        self.url = url
        self.stream = stream
        self.next_seq = 1
        self.seen: list[Seen] = []

    async def read(self) -> int:
        try:
            nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=1)
        except (OSError, nats.errors.Error):
            return len(self.seen)  # the server is down
        try:
            js = nc.jetstream(timeout=2)
            info = await js.stream_info(self.stream)
            while self.next_seq <= info.state.last_seq:
                msg = await js.get_msg(self.stream, self.next_seq)
                headers = msg.headers or {}
                envelope = orjson.loads(msg.data or b"")
                assert headers["Walrelay-Op"] == envelope["op"]
                assert msg.subject is not None
                self.seen.append(Seen(msg.subject, envelope, headers["Nats-Msg-Id"]))
                self.next_seq += 1
        except (nats.errors.Error, OSError):
            pass
        finally:
            await nc.close()
        return len(self.seen)

    async def until(self, count: int, within: float = 60.0) -> None:
        async def enough() -> bool:
            return await self.read() >= count

        await wait_for(enough, within=within, what=f"{count} messages in {self.stream}")


async def other_stream(server: NatsServer, prefix: str, subject: str) -> None:
    """A stream ``OTHER<prefix>`` capturing ``subject``, beside the sink's."""
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().add_stream(name="OTHER" + prefix, subjects=[subject])
    finally:
        await nc.close()


def nats_dest(server: NatsServer, prefix: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": f"nats-{prefix}",
        "retry": retry_fast(),
        "sink": {
            "type": "nats",
            "servers": server.url,
            "prefix": prefix,
            "stream": prefix.upper(),
            "timeout": 2,
            **sink,
        },
    }


async def test_every_op(server: NatsServer, db: str) -> None:
    every_op_setup(db)
    prefix = unique_prefix("n")
    config = make_config(db, EVERY_OP_TABLES, [nats_dest(server, prefix)])
    reader = StreamReader(server.url, prefix.upper())
    async with running_engine(config):
        every_op_run(db)
        await reader.until(EVERY_OP_COPIES)
    # Deliberate: let time pass to prove no extra copies arrive after the count was reached.
    await asyncio.sleep(0.3)
    assert await reader.read() == EVERY_OP_COPIES
    check_every_op(reader.seen)
    assert {s.name for s in reader.seen} == {
        f"{prefix}.public.items",
        f"{prefix}.public.full_ident",
        f"{prefix}.messages",
    }
    # Nats-Msg-Id is the event id; the truncate's two copies are told apart.
    for s in reader.seen:
        if s.envelope["op"] == "truncate":
            assert s.msg_id == f"{s.envelope['id']}@public.{s.name.rsplit('.', 1)[1]}"
        else:
            assert s.msg_id == s.envelope["id"]


async def test_per_key_order_parallel(server: NatsServer, db: str) -> None:
    per_key_setup(db)
    prefix = unique_prefix("n")
    dest = nats_dest(server, prefix, batch_size=10)
    dest["max_in_flight"] = 100
    config = make_config(db, ["public.counters"], [dest])
    reader = StreamReader(server.url, prefix.upper())
    async with running_engine(config) as engine:
        destination = engine.destinations[dest["name"]]
        assert destination.max_in_flight == 100 and not destination.ordered
        expected = per_key_run(db)
        await reader.until(len(expected))
    report = check(expected, counter_deliveries(reader.seen))
    assert report.ok(), report.summary()


async def test_server_killed_and_restarted(server: NatsServer, db: str) -> None:
    ledger_setup(db)
    prefix = unique_prefix("n")
    dest = nats_dest(server, prefix, batch_size=50)
    dest["max_in_flight"] = 200
    config = make_config(db, [LEDGER_TABLE], [dest])
    reader = StreamReader(server.url, prefix.upper())
    async with running_engine(config) as engine:
        destination = engine.destinations[dest["name"]]
        assert isinstance(destination.sink, NatsSink)  # no ledger in front
        writer = LedgerWriter(db).start()
        await reader.until(200)
        await asyncio.to_thread(server.kill)
        assert writer.committed < writer.transactions, "killed after the stream ended"
        await wait_for(lambda: destination.failures_total > 0, what="a failed delivery")
        await server.arestart()
        await asyncio.to_thread(writer.join)
        await reader.until(writer.events, within=120)
    # Deliberate: let time pass to prove no duplicates arrive late.
    await asyncio.sleep(0.5)
    await reader.read()
    report = check_ledger(writer, reader.seen, allow_duplicates=False)
    assert report.observed == writer.events


async def test_missing_stream_without_auto_create(server: NatsServer) -> None:
    sink = NatsSink(
        NatsSinkConfig(
            servers=[server.url], prefix=unique_prefix("n"), stream="NOPE", auto_create=False
        )
    )
    with pytest.raises(ConfigError, match="stream NOPE does not exist and auto_create is off"):
        await sink.open()


async def test_subject_outside_the_stream_is_a_clear_error(server: NatsServer) -> None:
    prefix = unique_prefix("n")
    await other_stream(server, prefix, f"{prefix}.other.>")
    sink = NatsSink(
        NatsSinkConfig(
            servers=[server.url], prefix=prefix, stream="OTHER" + prefix, auto_create=False
        ),
        SinkContext(tables=("public.orders",)),
    )
    with pytest.raises(ConfigError, match=rf"subject {prefix}\.public\.orders .* no stream"):
        await sink.open()


async def test_outbox_events_arrive_on_routed_subjects(server: NatsServer, db: str) -> None:
    """Mirror of test_outbox's Kafka test: route.topic is the subject, the payload the
    body, aggregate_id the walrelay-key header."""
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
    prefix = unique_prefix("n")
    dest = nats_dest(server, prefix)
    # Under the stream's default subjects ({prefix}.*.*): no stream_subjects needed.
    dest["router"] = {"type": "outbox", "topic": prefix + ".{routed_by}.events"}
    config = make(db, [dest])
    async with running_engine(config) as engine:
        expected = await write_orders(db)
        history = await write_aggregate_history(db, "42", 5)
        await wait_for(
            lambda: (
                engine.tracker.pending_events() == 0 and engine.stats.events_in >= 4 + len(history)
            ),
            within=60,
            what="the events delivered to NATS",
        )
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(prefix.upper())
        messages = [
            await js.get_msg(prefix.upper(), seq) for seq in range(1, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()
    payloads = [orjson.loads(m.data or b"") for m in messages]
    keys = [(m.headers or {})["walrelay-key"] for m in messages]
    # Each first event once, on its routed subject (their keys differ, so their
    # deliveries may overlap and arrive in any order).
    got = [
        ((m.subject or "").removeprefix(prefix + "."), k)
        for m, k, p in zip(messages, keys, payloads, strict=True)
        if "step" not in p
    ]
    assert sorted(got, key=lambda sk: [k for _, k in expected].index(sk[1])) == expected
    for m, key, payload in zip(messages, keys, payloads, strict=True):
        headers = m.headers or {}
        if "step" not in payload:
            assert payload == EXPECTED_PAYLOADS[key]
        assert headers["event_type"] in ("OrderCreated", "InvoiceSent", "OrderUpdated")
        assert headers["aggregate_type"] in ("order", "invoice")
        assert "walrelay-tombstone" not in headers
        assert headers["Nats-Msg-Id"] and headers["Walrelay-Op"] in ("insert", "message")
    # One aggregate's events arrive in commit order.
    of_42 = [p for k, p in zip(keys, payloads, strict=True) if k == "42"]
    assert of_42 == [EXPECTED_PAYLOADS["42"], *history]


async def test_routed_subject_outside_the_stream_is_a_permanent_error(
    server: NatsServer,
) -> None:
    from datetime import UTC, datetime

    from walrelay.errors import SinkError
    from walrelay.model import Event, Route

    prefix = unique_prefix("n")
    sink = NatsSink(
        NatsSinkConfig(servers=[server.url], prefix=prefix, stream=prefix.upper(), timeout=2)
    )
    await sink.open()

    def routed(seq: int, topic: str, value: bytes | None) -> Event:
        route = Route(topic, "7", value, (("event_type", "E"),))
        return Event(1, seq, "insert", "public.outbox", ("k",), b"{}", 1, datetime.now(UTC), route)

    try:
        with pytest.raises(
            SinkError, match=r"routed subject order\.events .*stream_subjects"
        ) as exc:
            await sink.deliver([routed(0, "order.events", b"{}")])
        assert exc.value.permanent
        await sink.deliver([routed(1, f"{prefix}.order.events", None)])  # a tombstone
    finally:
        await sink.close()
    nc = await nats.connect(server.url)
    try:
        msg = await nc.jetstream().get_msg(prefix.upper(), 1)
    finally:
        await nc.close()
    assert msg.subject == f"{prefix}.order.events" and not msg.data
    assert (msg.headers or {})["walrelay-tombstone"] == "true"
    assert (msg.headers or {})["walrelay-key"] == "7"


async def test_acks_duplicates_errors_and_silence(server: NatsServer) -> None:
    """The sink reads JetStream's acknowledgements itself: a batch sent again is
    stored once (counted as duplicates); an error answer (here: the subject
    belongs to another stream than the expected one) fails at once, not after
    the timeout; a server that does not answer fails the batch after the
    timeout, and nothing stays waiting for its answers."""
    from tests.factories import make_event

    prefix = unique_prefix("n")
    await other_stream(server, prefix, f"{prefix}.other.*")
    config = NatsSinkConfig(
        servers=[server.url],
        prefix=prefix,
        stream=prefix.upper(),
        stream_subjects=[f"{prefix}.public.*"],
        timeout=3,
    )
    sink = NatsSink(config, SinkContext(tables=("public.t",)))
    await sink.open()
    try:
        body = b'{"op":"insert"}'
        batch = [make_event(0x7000, i, keys=(str(i),), body=body) for i in range(20)]
        await sink.deliver(batch)
        await sink.deliver(batch[5:])
        assert sink.duplicates == 15
        reader = StreamReader(server.url, prefix.upper())
        await reader.read()
        assert [s.msg_id for s in reader.seen] == [e.id for e in batch]

        elsewhere = make_event(0x7100, 0, table="other.t")  # subject <prefix>.other.t
        started = asyncio.get_running_loop().time()
        with pytest.raises(SinkError, match="belongs to another stream") as info:
            await sink.deliver([batch[0], elsewhere])
        assert info.value.permanent
        assert asyncio.get_running_loop().time() - started < 2

        await asyncio.to_thread(server.kill)
        try:
            with pytest.raises(SinkUnavailable, match="not acknowledged within 3 s"):
                await sink.deliver([make_event(0x7200, i, keys=(str(i),)) for i in range(5)])
            assert sink._acks is not None and not sink._acks._waiting
        finally:
            await server.arestart()
    finally:
        await sink.close()
