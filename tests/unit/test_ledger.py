"""LedgeredSink: check -> send -> record, on an in-memory ledger that can fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from walrelay.config import parse_config
from walrelay.errors import SinkError
from walrelay.model import Event, Lsn
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.ledger import (
    LedgeredSink,
    LedgerUnavailable,
    PostgresLedger,
    RedisLedger,
    build_ledger,
    wrap_sink,
)
from walrelay.sinks.memory import MemorySink


def ev(lsn: int, seq: int = 0, key: str = "k") -> Event:
    return Event(
        commit_lsn=lsn,
        seq=seq,
        op="insert",
        table="public.t",
        keys=(key,),
        body=b"{}",
        xid=1,
        committed_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


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


def wrapped(**kw: object) -> tuple[LedgeredSink, MemorySink, FakeLedger]:
    inner = MemorySink(batch_size=10, **kw)  # type: ignore[arg-type]
    ledger = FakeLedger()
    sink = LedgeredSink(
        inner, ledger, "d", record_backoff=Backoff(initial=0.001, multiplier=1.0, maximum=0.001)
    )
    return sink, inner, ledger


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


async def test_unreachable_ledger_sends_nothing() -> None:
    sink, inner, ledger = wrapped()
    ledger.down = True
    with pytest.raises(LedgerUnavailable) as info:
        await sink.deliver([ev(100)])
    assert isinstance(info.value, SinkError) and not info.value.permanent
    assert inner.delivered == []
    ledger.down = False
    await sink.deliver([ev(100)])
    assert delivered_ids(inner) == [ev(100).id]


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
    for _ in range(5000):  # until the first record attempt failed
        if sink.record_retries:
            break
        await asyncio.sleep(0.001)
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
    from walrelay.sinks.factory import build_sink

    assert isinstance(wrap_sink(build_sink(by["hook"].sink), cfg, by["hook"]), LedgeredSink)
    file_sink = build_sink(by["file"].sink)
    assert wrap_sink(file_sink, cfg, by["file"]) is file_sink  # its own high-water mark
    pg_sink = build_sink(by["pg"].sink, destination="pg")
    assert wrap_sink(pg_sink, cfg, by["pg"]) is pg_sink  # transactional


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
