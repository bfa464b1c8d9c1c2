"""The ledger's combined round trips against real PostgreSQL and Redis: one
round trip records and checks together, a window of batches shares few round
trips, and the relay (sole writer) sends events above everything recorded
without a check -- counted on the wire (libpq's protocol trace, Redis's
command statistics), not by the client."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.pq import Trace

from tests.factories import make_event as ev
from tests.integration.test_ledger import _rows_read
from walrelay.model import Event
from walrelay.pipeline.ledger import LedgerHook, PostgresLedger, RedisLedger
from walrelay.pipeline.ledger_exchange import LedgerExchange
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink
from walrelay.testing.servers import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Wire:
    """Ledger calls seen on the wire: statements the PostgreSQL server ran
    (libpq's protocol trace), scripts Redis ran (its command statistics)."""

    def __init__(self, ledger: PostgresLedger | RedisLedger, redis: RedisServer | None) -> None:
        self.ledger = ledger
        self.redis = redis
        self._trace: Any = None

    async def start(self) -> None:
        if isinstance(self.ledger, PostgresLedger):
            conn = await self.ledger._connection()
            self._trace = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by the fixture
            conn.pgconn.trace(self._trace.fileno())
            conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)
        else:
            self._base = self._redis_calls()

    def count(self) -> int:
        if isinstance(self.ledger, PostgresLedger):
            conn = self.ledger._conn
            assert conn is not None
            conn.pgconn.untrace()
            self._trace.seek(0)
            text = self._trace.read()
            # Statements run (a prepare adds a Parse, not an Execute).
            return text.count("\tExecute\t")
        return self._redis_calls() - self._base

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()

    def _redis_calls(self) -> int:
        import redis

        assert self.redis is not None
        client = redis.Redis.from_url(self.redis.url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        # Commands the client sent (a script's own calls are counted apart, as
        # "zadd" etc.; the ledger sends none of those itself).
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


@pytest.fixture(params=["postgres", "redis"])
async def ledger(
    request: pytest.FixtureRequest, db: str, redis_server: RedisServer
) -> AsyncIterator[PostgresLedger | RedisLedger]:
    backend: PostgresLedger | RedisLedger
    if request.param == "postgres":
        backend = PostgresLedger(db, schema="walrelay")
    else:
        prefix = f"walrelay:ledger:{request.node.name}:"
        backend = RedisLedger(redis_server.url, key_prefix=prefix)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def wire(redis_server: RedisServer) -> Iterator[Callable[[PostgresLedger | RedisLedger], Wire]]:
    """``wire(ledger)``: a :class:`Wire` (closed after the test)."""
    made: list[Wire] = []

    def make(ledger: PostgresLedger | RedisLedger) -> Wire:
        made.append(Wire(ledger, redis_server if isinstance(ledger, RedisLedger) else None))
        return made[-1]

    yield make
    for w in made:
        w.close()


async def test_one_round_trip_records_and_checks_together(
    ledger: PostgresLedger | RedisLedger, wire: Callable[[PostgresLedger | RedisLedger], Wire]
) -> None:
    old = [ev(0x1_0000_0100, s) for s in range(5)]
    await ledger.record("d", old)
    await ledger.exchange("d", [], old)  # loads the script, prepares nothing stale
    sent_a = [ev(0x1_0000_0200, s) for s in range(3)]
    sent_b = [ev(0x1_0000_0300)]
    coming = [*old[1:3], ev(0x1_0000_0400), ev(0x1_0000_0400, 1)]
    exchange = LedgerExchange(lambda rec, chk: ledger.exchange("d", rec, chk))
    counter = wire(ledger)
    await counter.start()
    _, found, _, found_too = await asyncio.gather(
        exchange.record(sent_a),
        exchange.check(coming),
        exchange.record(sent_b),
        exchange.check([old[4]]),
    )
    assert counter.count() == 1 and exchange.round_trips == 1
    assert found == found_too == {old[1].id, old[2].id, old[4].id}
    recorded = await ledger.delivered("d", [*sent_a, *sent_b, *coming])
    assert recorded == {e.id for e in [*sent_a, *sent_b, *old[1:3]]}


async def test_exchange_reads_the_commit_lsn_from_the_id_and_trims(
    ledger: PostgresLedger | RedisLedger,
) -> None:
    assert await ledger.highest("d") is None
    high = 0x2_0000_0300  # above 2^32: both halves of the LSN matter
    events = [ev(0x1_0000_0100, 9), ev(0x1_FFFF_FFFF), ev(high, 12)]
    assert await ledger.exchange("d", events, []) == set()
    assert await ledger.highest("d") == high
    assert await ledger.exchange("d", [], events) == {e.id for e in events}
    await ledger.exchange("d", [ev(high, 13)], [], trim_below=0x1_FFFF_FFFF)
    assert await ledger.delivered("d", events) == {events[1].id, events[2].id}
    await ledger.exchange("d", [ev(high, 14)], [], trim_below=high)
    assert await ledger.delivered("d", events) == {events[2].id}
    assert await ledger.highest("d") == high


async def test_a_window_of_batches_shares_few_round_trips(
    ledger: PostgresLedger | RedisLedger, wire: Callable[[PostgresLedger | RedisLedger], Wire]
) -> None:
    """Webhook-shaped: batches of one event, 32 in flight, each checked and
    recorded (not the relay's sole-writer shortcut)."""
    sink = MemorySink(batch_size=1, delay=(0.001, 0.003), seed=1)
    hook = LedgerHook(ledger, "d")
    dest = Destination("d", sink, max_in_flight=32, hooks=[hook])
    counter = wire(ledger)
    await counter.start()
    events = [ev(0x1_0000_0000 + i * 0x100, keys=(f"k{i}",)) for i in range(400)]
    dest.start()
    for e in events:
        await dest.put(e)
    assert await dest.drain(timeout=60)
    await dest.stop()
    trips = counter.count()
    assert len(sink.delivered) == 400
    assert hook.ledger_ids == 800  # each event checked once and recorded once
    # One call per check and per record would be 800.
    assert trips == hook.ledger_calls <= 200, trips
    assert await ledger.delivered("d", events) == {e.id for e in events}


async def test_the_sole_writer_checks_only_what_may_be_recorded(
    ledger: PostgresLedger | RedisLedger, wire: Callable[[PostgresLedger | RedisLedger], Wire]
) -> None:
    recorded = [ev(0x1_0000_0100, s) for s in range(5)]
    await ledger.record("d", recorded)
    sink = MemorySink(batch_size=10)
    hook = LedgerHook(ledger, "d", sole_writer=True)
    await hook.open()
    dest = Destination("d", sink, max_in_flight=10, hooks=[hook])
    # A replay after a restart: the recorded ones, one more of the same
    # transaction (never sent), then the stream goes on above.
    replay = [*recorded, ev(0x1_0000_0100, 5)]
    stream = [ev(0x1_0000_0200 + i * 0x10, s) for i in range(4) for s in range(3)]
    await dest.send(replay)
    await dest.send(replay[:1])  # a batch below: checked again, still dropped
    counter = wire(ledger)
    await counter.start()
    for i in range(0, len(stream), 3):
        await dest.send(stream[i : i + 3])
    assert _ids(sink.delivered) == [replay[-1].id, *_ids(stream)]
    assert hook.replays_dropped == 6 and hook.unchecked == len(stream)
    # Before the stream: two checks (6 + 1 ids) and a record (1 id). Then, one
    # batch at a time, each waits for a round trip with no ids (nothing in
    # flight to ride) and is recorded: its ids go to the ledger once, not twice.
    assert counter.count() == hook.ledger_calls - 3 == 2 * 4
    assert hook.ledger_ids - 8 == len(stream)
    # After a restart the whole stream is below the ledger's highest: all checked, all dropped.
    again = LedgerHook(ledger, "d", sole_writer=True)
    await again.open()
    dest2 = Destination("d", sink, max_in_flight=10, hooks=[again])
    await dest2.send(stream)
    assert again.replays_dropped == len(stream) and again.unchecked == 0
    assert len(sink.delivered) == 1 + len(stream)


async def test_exchange_check_reads_only_the_batch_lsn_range(db: str) -> None:
    """The exchange statement's check keeps to the (destination, commit_lsn)
    index, as the plain check does (see test_ledger.py)."""
    ledger = PostgresLedger(db, schema="walrelay")
    await ledger.open()
    try:
        older = [ev(0x1000 + i) for i in range(20_000)]
        await ledger.exchange("d", older, [])
        batch = [ev(0x9000 + i) for i in range(200)]
        assert await ledger.exchange("d", batch[:100], []) == set()
        assert await ledger.exchange("d", [], batch) == {e.id for e in batch[:100]}
    finally:
        await ledger.close()
    with psycopg.connect(db, autocommit=True) as conn:
        from walrelay.state.ledger import LedgerTable

        query = LedgerTable("walrelay")._exchange.as_string(conn)
        params = {
            "d": "d",
            "record": None,
            "trim": None,
            "check": ",".join(e.id for e in batch),
            "low": f"0/{0x9000:X}",
            "high": f"0/{0x9000 + 199:X}",
        }
        plan = conn.execute("explain (analyze, format json) " + query, params).fetchone()
        assert plan is not None
        read = _rows_read(plan[0][0]["Plan"])
        assert read <= 1_000, f"the check read {read} rows for a batch of 200"


def _ids(events: Sequence[Event]) -> list[str]:
    return [e.id for e in events]
