"""LedgerHook: check -> send -> record around a destination's sends, on an
in-memory ledger that can fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tests.factories import make_event as ev
from tests.waiting import wait_for
from walrelay.config import parse_config
from walrelay.errors import SinkError
from walrelay.model import Event, Lsn
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.ledger import (
    LedgerHook,
    LedgerUnavailable,
    PostgresLedger,
    RedisLedger,
    build_ledger,
    ledger_hook,
)
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink


class FakeLedger:
    def __init__(self) -> None:
        self.ids: dict[str, dict[str, Lsn]] = {}
        self.down = False
        self.down_for_records = 0  # the next N records fail
        self.checks = 0
        self.records = 0
        self.trims: list[Lsn] = []
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def delivered(self, destination: str, events: Sequence[Event]) -> set[str]:
        self.checks += 1
        if self.down:
            raise LedgerUnavailable("ledger down")
        have = self.ids.get(destination, {})
        return {e.id for e in events if e.id in have}

    async def record(
        self, destination: str, events: Sequence[Event], trim_below: Lsn | None = None
    ) -> None:
        if self.down or self.down_for_records:
            self.down_for_records = max(0, self.down_for_records - 1)
            raise LedgerUnavailable("ledger down")
        self.records += 1
        have = self.ids.setdefault(destination, {})
        for e in events:
            have[e.id] = e.commit_lsn
        if trim_below is not None:
            self.trims.append(trim_below)
            for i in [i for i, lsn in have.items() if lsn < trim_below]:
                del have[i]


class Ledgered:
    """A destination's sends (``Destination.send``) through a ledger hook, with
    the hook's stats readable as attributes."""

    def __init__(self, inner: MemorySink, hook: LedgerHook) -> None:
        self.inner = inner
        self.hook = hook
        self.destination = Destination("d", inner, max_in_flight=64, hooks=[hook])

    async def open(self) -> None:
        await self.inner.open()
        await self.hook.open()

    async def deliver(self, events: Sequence[Event]) -> None:
        await self.destination.send(events)

    async def close(self) -> None:
        await self.hook.close()
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def wrapped(**kw: object) -> tuple[Ledgered, MemorySink, FakeLedger]:
    inner = MemorySink(batch_size=10, **kw)  # type: ignore[arg-type]
    ledger = FakeLedger()
    hook = LedgerHook(
        ledger, "d", ledger_backoff=Backoff(initial=0.001, multiplier=1.0, maximum=0.001)
    )
    return Ledgered(inner, hook), inner, ledger


def delivered_ids(inner: MemorySink) -> list[str]:
    return [e.id for e in inner.delivered]


async def test_replays_are_dropped_and_new_events_recorded() -> None:
    sink, inner, ledger = wrapped()
    await sink.open()
    assert ledger.opened
    batch = [ev(100, i) for i in range(3)]
    await sink.deliver(batch)
    await sink.deliver(batch)  # replay after a restart: nothing sent
    await sink.deliver([*batch[1:], ev(200)])
    assert delivered_ids(inner) == [e.id for e in batch] + [ev(200).id]
    assert sink.replays_dropped == 5 and sink.sent == 4
    assert ledger.checks == 3 and ledger.records == 2  # one of each per batch
    await sink.close()
    assert ledger.closed


async def test_unreachable_ledger_pauses_delivery_until_it_is_back() -> None:
    sink, inner, ledger = wrapped()
    ledger.down = True
    task = asyncio.create_task(sink.deliver([ev(100)]))
    await wait_for(lambda: sink.check_retries >= 3, within=5, interval=0.001, what="3 retries")
    assert inner.delivered == [] and not task.done()  # nothing sent unchecked
    assert sink.ledger_down_since is not None and "ledger down" in (sink.ledger_error or "")
    ledger.down = False
    await task  # no error reached the scheduler: nothing failed, nothing parked
    assert delivered_ids(inner) == [ev(100).id]
    assert sink.ledger_down_since is None and sink.ledger_error is None


async def test_record_outage_retries_the_record_not_the_send() -> None:
    sink, inner, ledger = wrapped()
    ledger.down_for_records = 5
    await sink.deliver([ev(100), ev(100, 1)])
    assert len(inner.delivered) == 2  # sent once, recorded on the 6th try
    assert sink.record_retries == 5
    assert set(ledger.ids["d"]) == {ev(100).id, ev(100, 1).id}


async def test_failed_send_records_nothing() -> None:
    sink, _, ledger = wrapped(fail_times=1)
    with pytest.raises(SinkError):
        await sink.deliver([ev(100)])
    assert ledger.ids == {}
    await sink.deliver([ev(100)])
    assert ledger.ids["d"] == {ev(100).id: 100}


async def test_trim_rides_along_a_record_and_keeps_ids_at_the_floor() -> None:
    sink, _, ledger = wrapped()
    await sink.deliver([ev(100), ev(200)])
    sink.trim_below(200)
    sink.trim_below(150)  # never lowers the floor
    await sink.deliver([ev(300)])
    assert ledger.trims == [200]
    assert set(ledger.ids["d"]) == {ev(200).id, ev(300).id}
    await sink.deliver([ev(400)])
    assert ledger.trims == [200]  # nothing new to trim


async def test_cancelled_while_recording_leaves_events_unrecorded() -> None:
    sink, inner, ledger = wrapped()
    ledger.down_for_records = 10**9
    task = asyncio.create_task(sink.deliver([ev(100)]))
    await wait_for(lambda: sink.record_retries > 0, within=5, interval=0.001, what="a record retry")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(inner.delivered) == 1 and "d" not in ledger.ids  # resent after restart


def test_ledger_config_defaults_and_overrides() -> None:
    cfg = parse_config(
        {
            "source": {"dsn": "host=src dbname=app", "tables": ["t"]},
            "destinations": [
                {"name": "hook", "sink": {"type": "webhook", "url": "http://h/x"}},
                {
                    "name": "hook2",
                    "sink": {"type": "webhook", "url": "http://h/y"},
                    "ledger": {"type": "redis", "url": "redis://127.0.0.1:1/0"},
                },
                {
                    "name": "raw",
                    "sink": {"type": "webhook", "url": "http://h/z"},
                    "ledger": {"type": "none"},
                },
                {"name": "file", "sink": {"type": "file", "path": "/tmp/x.jsonl"}},
                {"name": "pg", "sink": {"type": "postgres", "dsn": "host=t"}},
            ],
        }
    )
    by = {d.name: d for d in cfg.destinations}
    default = build_ledger(cfg, by["hook"])
    assert isinstance(default, PostgresLedger) and default.schema == "walrelay"
    assert "host=src" in default.where
    assert isinstance(build_ledger(cfg, by["hook2"]), RedisLedger)
    assert build_ledger(cfg, by["raw"]) is None
    from walrelay.sinks.registry import build_sink

    assert isinstance(ledger_hook(build_sink(by["hook"].sink), cfg, by["hook"]), LedgerHook)
    file_sink = build_sink(by["file"].sink)
    assert ledger_hook(file_sink, cfg, by["file"]) is None  # its own high-water mark
    pg_sink = build_sink(by["pg"].sink, destination="pg")
    assert ledger_hook(pg_sink, cfg, by["pg"]) is None  # transactional


def test_top_level_ledger_redis() -> None:
    cfg = parse_config(
        {
            "source": {"dsn": "host=src", "tables": ["t"]},
            "ledger": {"type": "postgres", "dsn": "host=state password=s3cret", "schema": "st"},
            "destinations": [{"name": "h", "sink": {"type": "webhook", "url": "http://h/x"}}],
        }
    )
    ledger = build_ledger(cfg, cfg.destinations[0])
    assert isinstance(ledger, PostgresLedger) and ledger.schema == "st"
    assert "s3cret" not in repr(ledger) and "host=state" in ledger.where


async def test_concurrent_batches_share_ledger_calls() -> None:
    sink, inner, ledger = wrapped()
    batches = [[ev(100 + i)] for i in range(32)]  # webhooks: one event per batch
    await asyncio.gather(*(sink.deliver(b) for b in batches))
    assert len(inner.delivered) == 32 and len(ledger.ids["d"]) == 32
    assert ledger.checks <= 2 and ledger.records <= 2  # not 32 of each
    assert sink.ledger_calls == ledger.checks + ledger.records
    await asyncio.gather(*(sink.deliver(b) for b in batches))  # all replays
    assert len(inner.delivered) == 32 and sink.replays_dropped == 32


async def test_batches_waiting_for_the_ledger_share_its_calls() -> None:
    sink, inner, ledger = wrapped()
    ledger.down = True
    tasks = [asyncio.create_task(sink.deliver([ev(100 + i)])) for i in range(5)]
    await wait_for(
        lambda: sink.check_retries >= 10, within=5, interval=0.001, what="10 check retries"
    )
    assert inner.delivered == []
    assert ledger.checks < sink.check_retries  # a failed call fails every batch in it
    ledger.down = False
    await asyncio.gather(*tasks)
    assert len(inner.delivered) == 5
