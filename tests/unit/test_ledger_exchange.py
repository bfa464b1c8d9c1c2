"""LedgerExchange: what waits goes together, one round trip at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.factories import make_event as ev
from tests.waiting import wait_for
from walrelay.model import Event, Lsn
from walrelay.pipeline.ledger import ExchangingLedger, LedgerHook, LedgerUnavailable
from walrelay.pipeline.ledger_exchange import LedgerExchange
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink


class Store:
    """Answers round trips when released; remembers what each carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.release = asyncio.Event()
        self.error: Exception | None = None
        self.have: set[str] = set()

    async def __call__(self, records: list[Event], checks: list[Event]) -> set[str]:
        self.calls.append(([e.id for e in records], [e.id for e in checks]))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        self.have |= {e.id for e in records}
        return {e.id for e in checks if e.id in self.have}


async def test_what_waits_goes_in_the_next_round_trip_records_first() -> None:
    store = Store()
    exchange = LedgerExchange(store)
    first = asyncio.ensure_future(exchange.record([ev(1)]))
    await wait_for(lambda: len(store.calls) == 1, what="the first round trip")
    waiting = [
        asyncio.ensure_future(exchange.check([ev(1), ev(3)])),
        asyncio.ensure_future(exchange.record([ev(2)])),
        asyncio.ensure_future(exchange.check([ev(2)])),
    ]
    await asyncio.sleep(0)
    store.release.set()
    await first
    found = await asyncio.gather(*waiting)
    assert store.calls == [([ev(1).id], []), ([ev(2).id], [ev(1).id, ev(3).id, ev(2).id])]
    assert found[0] == found[2] == {ev(1).id, ev(2).id}
    assert exchange.round_trips == 2 and exchange.ids == 5


async def test_ready_rides_the_round_trip_in_flight() -> None:
    store = Store()
    exchange = LedgerExchange(store)
    record = asyncio.ensure_future(exchange.record([ev(1)]))
    await wait_for(lambda: len(store.calls) == 1, what="a round trip in flight")
    ready = asyncio.create_task(exchange.ready())
    await asyncio.sleep(0)
    assert not ready.done()
    store.release.set()
    await asyncio.gather(record, ready)
    assert len(store.calls) == 1
    await exchange.ready()  # nothing in flight: a round trip of its own, with no ids
    assert store.calls[1] == ([], [])


async def test_a_failed_round_trip_fails_its_callers_and_riders() -> None:
    store = Store()
    store.error = LedgerUnavailable("down")
    exchange = LedgerExchange(store)
    record = asyncio.ensure_future(exchange.record([ev(1)]))
    await wait_for(lambda: len(store.calls) == 1, what="a round trip in flight")
    ready = asyncio.create_task(exchange.ready())
    await asyncio.sleep(0)
    store.release.set()
    for task in (record, ready):
        with pytest.raises(LedgerUnavailable):
            await task
    assert store.have == set()


async def test_a_cancelled_caller_is_left_out() -> None:
    store = Store()
    exchange = LedgerExchange(store)
    first = asyncio.ensure_future(exchange.check([ev(1)]))
    await wait_for(lambda: len(store.calls) == 1, what="a round trip in flight")
    gone = asyncio.ensure_future(exchange.record([ev(2)]))
    kept = asyncio.ensure_future(exchange.record([ev(3)]))
    await asyncio.sleep(0)
    gone.cancel()
    store.release.set()
    await asyncio.gather(first, kept)
    assert store.calls[1] == ([ev(3).id], [])


class ExchangingStore:
    """An in-memory ledger that exchanges (and can be down at open)."""

    def __init__(self, have: dict[str, int]) -> None:
        self.have = dict(have)
        self.down = False
        self.checked: list[str] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def delivered(self, destination: str, events: Sequence[Event]) -> set[str]:
        return await self.exchange(destination, [], events)

    async def record(
        self, destination: str, events: Sequence[Event], trim_below: Lsn | None = None
    ) -> None:
        await self.exchange(destination, events, [], trim_below)

    async def exchange(
        self,
        destination: str,
        record: Sequence[Event],
        check: Sequence[Event],
        trim_below: Lsn | None = None,
    ) -> set[str]:
        if self.down:
            raise LedgerUnavailable("down")
        self.have.update({e.id: e.commit_lsn for e in record})
        self.checked += [e.id for e in check]
        return {e.id for e in check if e.id in self.have}

    async def highest(self, destination: str) -> Lsn | None:
        if self.down:
            raise LedgerUnavailable("down")
        return max(self.have.values(), default=None)


@pytest.mark.parametrize("down_at_open", [False, True])
async def test_the_sole_writer_checks_everything_while_the_highest_is_unknown(
    down_at_open: bool,
) -> None:
    store = ExchangingStore({ev(100).id: 100})
    assert isinstance(store, ExchangingLedger)
    hook = LedgerHook(store, "d", sole_writer=True)
    store.down = down_at_open
    await hook.open()
    store.down = False
    dest = Destination("d", MemorySink(batch_size=10), hooks=[hook])
    await dest.send([ev(100), ev(100, 1)])  # at the highest LSN: checked
    await dest.send([ev(200)])  # above: checked only when the highest is known
    expected = [ev(100).id, ev(100, 1).id] + ([ev(200).id] if down_at_open else [])
    assert store.checked == expected
    assert hook.unchecked == (0 if down_at_open else 1) and hook.replays_dropped == 1
