"""Parking with a destination: key order, barriers, dead events, the cap, re-reads.

The store's table is replaced by a dict (``TableStore``) behind the real writer
loop, so these tests run without PostgreSQL; tests/integration/test_parking.py
runs the same store against a real one. The index alone: test_parking_index.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walrelay.config import ParkingConfig, parse_config
from walrelay.errors import ConfigError, SinkError
from walrelay.model import Event, Route
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.parking import PAUSED_MESSAGE, DestinationParking, ParkingStore
from walrelay.pipeline.parking.writes import DeleteRow, ParkRows, ReadRows, UpdateRow, Write
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.memory import MemorySink
from walrelay.state.parking import (
    decode_key,
    display_key,
    encode_key,
    key_matches,
    route_from_json,
    route_to_json,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
FAST = Backoff(initial=0.001, multiplier=2.0, maximum=0.005)


def ev(i: int, *keys: str) -> Event:
    """Event number ``i`` (ids increase with i); no keys = a barrier."""
    return Event(
        commit_lsn=1000 + i // 4,
        seq=i % 4,
        op="truncate" if not keys else "update",
        table="public.t",
        keys=keys,
        body=f'{{"n":{i}}}'.encode(),
        xid=1,
        committed_at=T0,
    )


def n_of(e: Event) -> int:
    return int(e.body[5:-1])


class _NoConnection:
    async def get(self) -> None:
        return None

    async def reset(self) -> None:
        return None


class TableStore(ParkingStore):
    """ParkingStore whose table is a dict; the real writer loop applies the writes."""

    def __init__(self) -> None:
        super().__init__("host=unused", "walrelay")
        self._writer = _NoConnection()  # type: ignore[assignment]
        self.table: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.events: dict[tuple[str, int, int], Event] = {}
        self.writes = 0
        self.fail_writes = 0  # the next N write transactions fail
        self.hold = asyncio.Event()  # cleared: writes wait (to observe "not yet durable")
        self.hold.set()

    async def _listen_loop(self) -> None:
        await asyncio.Event().wait()

    async def _apply(self, conn: Any, batch: list[Write]) -> None:
        import psycopg

        await self.hold.wait()
        if self.fail_writes:
            self.fail_writes -= 1
            raise psycopg.OperationalError("state database down (injected)")
        self.writes += 1
        for op in batch:
            name = op.destination
            if isinstance(op, ReadRows):
                op.snapshot = [
                    (
                        lsn,
                        seq,
                        r["keys"],
                        r["size"],
                        r["attempts"],
                        r["dead"],
                        r["skipped"],
                        r["permanent"],
                        r["next_at"],
                        r["first_at"],
                        r.get("revision", 0),
                    )
                    for (d, lsn, seq), r in sorted(self.table.items())
                    if d == name
                ]
            elif isinstance(op, ParkRows):
                for p in op.params:
                    key = (p[0], p[1], p[2])
                    self.table[key] = {
                        "keys": p[4],
                        "size": p[10],
                        "attempts": p[11],
                        "error": p[12],
                        "permanent": p[13],
                        "dead": p[14],
                        "skipped": p[15],
                        "first_at": p[16].timestamp(),
                        "next_at": p[18].timestamp(),
                    }
                    self.events[key] = Event(
                        commit_lsn=p[1],
                        seq=p[2],
                        op=p[5],
                        table=p[6],
                        keys=tuple(decode_key(k) for k in p[4]),
                        body=p[9],
                        xid=p[7],
                        committed_at=p[8],
                    )
            elif isinstance(op, DeleteRow):
                self.table.pop((name, *op.row.ident), None)
            elif isinstance(op, UpdateRow):
                key = (name, op.row.ident[0], op.row.ident[1])
                # ... where revision = <the revision the engine last read>
                op.superseded = (
                    key not in self.table or self.table[key].get("revision", 0) != op.params[-1]
                )
                if not op.superseded:
                    attempts, error, permanent, dead, skipped, next_at, _, *_ = op.params
                    self.table[key].update(
                        attempts=attempts,
                        error=error,
                        permanent=permanent,
                        dead=dead,
                        skipped=skipped,
                        next_at=next_at.timestamp(),
                    )

    async def fetch(self, destination: str, idents: list[tuple[int, int]]) -> dict[Any, Event]:
        return {
            i: self.events[(destination, *i)] for i in idents if (destination, *i) in self.table
        }

    def rows(self, name: str = "d") -> list[dict[str, Any]]:
        return [
            {"n": n_of(self.events[k]), **r} for k, r in sorted(self.table.items()) if k[0] == name
        ]


class Recorder(DeliveryHook):
    """A delivery hook: each event id finished exactly once."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = defaultdict(int)

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        for e in events:
            self.counts[(e.commit_lsn, e.seq)] += 1

    def finished(self, events: Sequence[Event]) -> bool:
        return all(self.counts.get((e.commit_lsn, e.seq)) == 1 for e in events)


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition on stats that have no awaitable of their own."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polling plain attributes
            await asyncio.sleep(0.001)


def parking(**kw: Any) -> ParkingConfig:
    kw.setdefault("backoff", {"initial": 0.001, "multiplier": 2.0, "max": 0.01})
    kw.setdefault("park_after", 2)
    return ParkingConfig.model_validate(kw)


class Rig:
    def __init__(self, sink: MemorySink, cfg: ParkingConfig, *, max_in_flight: int = 8) -> None:
        self.sink = sink
        self.store = TableStore()
        self.recorder = Recorder()
        self.dest = Destination(
            "d",
            sink,
            max_in_flight=max_in_flight,
            backoff=FAST,
            hooks=[self.recorder],
            parking=self.store.parking_for("d", cfg, max_in_flight=max_in_flight),
        )
        self.parking: DestinationParking = self.store.destinations["d"]
        assert self.dest.parking is self.parking

    async def __aenter__(self) -> Rig:
        self.store.start()
        self.dest.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dest.stop()
        await self.store.close()

    async def put(self, *events: Event) -> None:
        for e in events:
            await self.dest.put(e)

    def delivered(self, key: str) -> list[int]:
        return [n_of(e) for e in self.sink.delivered if key in e.keys]


async def test_failing_key_is_parked_others_flow_then_it_drains_in_order() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"bad"})
    async with Rig(sink, parking()) as rig:
        events = [ev(i, "bad" if i % 3 == 0 else f"k{i}") for i in range(30)]
        await rig.put(*events)
        good = [e for e in events if "bad" not in e.keys]
        await sink.wait_delivered(len(good))
        # Every event is finished: delivered, or durably parked.
        await until(lambda: rig.recorder.finished(events))
        assert rig.dest.parked_total == 10
        parked = rig.store.rows()
        assert [r["n"] for r in parked] == list(range(0, 30, 3))
        assert parked[0]["attempts"] >= 2 and parked[0]["error"]  # failed twice in memory
        assert all(r["attempts"] == 0 and r["error"] is None for r in parked[1:])  # diverted
        assert rig.parking.stats()["parked"] == 10
        sink.fail_keys.clear()  # the receiver heals
        await until(lambda: not rig.store.table)
        assert rig.delivered("bad") == list(range(0, 30, 3))
        # The key is free again: a new event goes straight through.
        await rig.put(ev(40, "bad"))
        await until(lambda: rig.delivered("bad")[-1:] == [40])
        assert not rig.parking.index.active and rig.parking.stats()["delivered_total"] == 10


async def test_parking_is_durable_before_the_event_counts_as_finished() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"bad"})
    async with Rig(sink, parking()) as rig:
        rig.store.hold.clear()  # the state database is slow
        e0, e1 = ev(0, "bad"), ev(1, "bad")
        await rig.put(e0, e1)
        await until(lambda: bool(rig.store._writes))
        await asyncio.sleep(0.05)  # nothing may finish while the write is pending
        assert not rig.recorder.counts
        rig.store.hold.set()
        await until(lambda: rig.recorder.finished([e0, e1]))
        assert len(rig.store.table) == 2


async def test_state_database_outage_keeps_events_in_memory_until_written() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"bad"})
    async with Rig(sink, parking()) as rig:
        rig.store.fail_writes = 3
        e0 = ev(0, "bad")
        await rig.put(e0)
        await until(lambda: rig.recorder.finished([e0]), within=10)
        assert len(rig.store.table) == 1 and rig.store.fail_writes == 0


async def test_live_event_arriving_while_the_backlog_drains_goes_behind_it() -> None:
    release = asyncio.Event()
    hang = False

    async def slow_first(batch: Sequence[Event]) -> None:
        if hang and n_of(batch[0]) == 0:
            await release.wait()

    sink = MemorySink(batch_size=1, fail_keys={"bad"}, delay=slow_first)
    async with Rig(sink, parking()) as rig:
        await rig.put(ev(0, "bad"), ev(1, "bad"))
        await until(lambda: len(rig.store.table) == 2)
        hang = True  # the next retry of the first event hangs ...
        sink.fail_keys.clear()
        await until(lambda: sink.active == 1)
        await rig.put(ev(2, "bad"))  # ... while a new event of the key arrives
        await until(lambda: len(rig.store.table) == 3)
        release.set()
        await until(lambda: not rig.store.table)
        await until(lambda: len(rig.delivered("bad")) == 3)
        assert rig.delivered("bad") == [0, 1, 2]


async def test_an_event_with_two_keys_blocks_both() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"a"})
    async with Rig(sink, parking()) as rig:
        await rig.put(ev(0, "a"), ev(1, "b", "a"), ev(2, "b"), ev(3, "c"))
        await until(lambda: len(rig.store.table) == 3)
        assert rig.delivered("c") == [3]
        assert rig.delivered("b") == []  # 2 waits behind 1, which waits behind 0
        sink.fail_keys.clear()
        await until(lambda: not rig.store.table)
        assert [n_of(e) for e in sink.delivered if e.keys != ("c",)] == [0, 1, 2]


async def test_a_barrier_goes_behind_everything_parked_and_holds_everything_after() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"a"})
    async with Rig(sink, parking()) as rig:
        await rig.put(ev(0, "a"), ev(1, "b"))
        await until(lambda: len(rig.store.table) == 1 and rig.delivered("b") == [1])
        await rig.put(ev(2), ev(3, "c"), ev(4, "a"))
        await until(lambda: len(rig.store.table) == 4)
        assert rig.delivered("c") == []
        sink.fail_keys.clear()
        await until(lambda: not rig.store.table)
        assert [n_of(e) for e in sink.delivered] == [1, 0, 2, 3, 4] or [
            n_of(e) for e in sink.delivered
        ] == [1, 0, 2, 4, 3]


async def test_permanent_rejection_is_dead_after_its_budget_and_blocks_its_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink(
        batch_size=1,
        fail_keys={"bad"},
        error=lambda batch: SinkError("422 Unprocessable", permanent=True),
    )
    async with Rig(sink, parking(permanent_attempts=3, park_after=5)) as rig:
        await rig.put(ev(0, "bad"), ev(1, "ok"))
        await until(lambda: bool(rig.store.rows()) and rig.store.rows()[0]["dead"])
        row = rig.store.rows()[0]
        # Parked at the first rejection (no in-memory retries), dead at the third.
        assert row["attempts"] == 3 and row["permanent"] and not row["skipped"]
        assert sink.failures == 3
        await rig.put(ev(2, "bad"))
        await until(lambda: len(rig.store.table) == 2)
        assert rig.delivered("ok") == [1] and rig.delivered("bad") == []
        stats = rig.parking.stats()
        assert stats["dead"] == 1 and stats["parked"] == 1 and stats["dead_total"] == 1
        assert any("is dead after 3 attempt(s)" in r.message for r in caplog.records)
        # The key stays blocked: the dead event is not retried, the next one waits.
        await asyncio.sleep(0.05)
        assert sink.failures == 3 and rig.delivered("bad") == []


async def test_skip_dead_moves_the_key_on_and_keeps_the_row() -> None:
    sink = MemorySink(batch_size=1, fail_ids={"00000000000003E8/0000000000"})
    async with Rig(sink, parking(max_attempts=3, on_dead="skip_dead")) as rig:
        await rig.put(ev(0, "a"), ev(1, "a"))
        await until(lambda: rig.delivered("a") == [1])
        # The store is written behind delivery: wait for the dead row to be written.
        await until(lambda: [r["skipped"] for r in rig.store.rows()] == [True])
        (row,) = rig.store.rows()
        assert row["n"] == 0 and row["dead"] and row["skipped"] and row["attempts"] == 3
        assert not rig.parking.index.active
        assert rig.parking.stats()["skipped_total"] == 1


async def test_retry_after_is_honoured_up_to_the_maximum() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"a"}, retry_after=30.0)
    cfg = parking(backoff={"initial": 0.001, "max": 7.0}, park_after=1)
    async with Rig(sink, cfg) as rig:
        before = time.time()
        await rig.put(ev(0, "a"))
        await until(lambda: len(rig.store.table) == 1)
        next_at = rig.store.rows()[0]["next_at"]
        assert before + 6.9 <= next_at <= time.time() + 7.1


async def test_cap_pauses_puts_and_resumes_when_the_backlog_drains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink(batch_size=1, fail_when=lambda e: True)
    async with Rig(sink, parking(max_events=4, park_after=1)) as rig:
        events = [ev(i, f"k{i}") for i in range(12)]
        await rig.put(*events[:6])
        await until(lambda: rig.parking.paused)
        assert any(
            r.levelno == logging.CRITICAL and r.message.startswith(PAUSED_MESSAGE)
            for r in caplog.records
        )
        assert rig.dest.paused and not rig.dest.try_put(events[6])
        late = asyncio.create_task(rig.put(*events[6:]))
        await asyncio.sleep(0.05)
        assert not late.done()  # replication paused: nothing more is taken
        assert rig.dest.buffered_events + rig.dest.in_flight <= 6
        assert len(rig.store.table) <= 5  # the cap, and at most one batch over it
        sink.fail_when = None
        await asyncio.wait_for(late, 5)
        await sink.wait_delivered(12)
        assert sorted(n_of(e) for e in sink.delivered) == list(range(12))
        await until(lambda: rig.recorder.finished(events))
        assert not rig.parking.paused and rig.parking.stats()["pauses_total"] >= 1


async def test_reconcile_applies_discard_and_retry_from_the_cli() -> None:
    sink = MemorySink(
        batch_size=1, fail_keys={"a"}, error=lambda b: SinkError("400", permanent=True)
    )
    async with Rig(sink, parking(permanent_attempts=1)) as rig:
        await rig.put(ev(0, "a"), ev(1, "a"), ev(2, "a"))
        await until(lambda: len(rig.store.table) == 3)
        assert [r["dead"] for r in rig.store.rows()] == [True, False, False]
        # `walrelay parking discard --id <0>`: the key moves on to 1, which is
        # delivered (it failed only as a diverted event, never itself).
        sink.fail_keys.clear()
        del rig.store.table[("d", 1000, 0)]
        rig.store.reconcile()
        await until(lambda: not rig.store.table)
        assert rig.delivered("a") == [1, 2]
        assert rig.parking.stats()["discarded_total"] == 1

        # `walrelay parking retry`: a dead event comes alive.
        sink.fail_keys.add("b")
        await rig.put(ev(4, "b"))
        await until(lambda: bool(rig.store.rows()) and rig.store.rows()[0]["dead"])
        sink.fail_keys.clear()
        row = rig.store.table[("d", 1001, 0)]
        row.update(dead=False, next_at=time.time(), revision=row.get("revision", 0) + 1)
        rig.store.reconcile()
        await until(lambda: rig.delivered("b") == [4])
        assert not rig.store.table


async def test_restart_keeps_the_schedule() -> None:
    """A row loaded with next_attempt_at in the future waits for it; one in the
    past is tried at once; a row behind it in its key waits for it."""
    sink = MemorySink(batch_size=1)
    async with Rig(sink, parking()) as rig:
        now = time.time()
        for i, key, next_at in [(0, "late", now + 0.4), (1, "late", now - 5), (2, "due", now - 5)]:
            e = ev(i, key)
            rig.store.table[("d", e.commit_lsn, e.seq)] = {
                "keys": [key],
                "size": len(e.body),
                "attempts": 4,
                "error": "x",
                "permanent": False,
                "dead": False,
                "skipped": False,
                "first_at": now - 60,
                "next_at": next_at,
            }
            rig.store.events[("d", e.commit_lsn, e.seq)] = e
        rig.store.reconcile()  # what load() does at start-up
        await until(lambda: rig.delivered("due") == [2])
        late = ev(9, "late")
        assert rig.delivered("late") == [] and rig.parking.blocks([late]) == [late]
        await until(lambda: rig.delivered("late") == [0, 1])
        assert time.time() >= now + 0.4


async def test_ordered_sinks_cannot_park() -> None:
    store = TableStore()
    with pytest.raises(ValueError, match="ordered sink"):
        Destination("f", MemorySink(ordered=True), parking=store.parking_for("f", parking()))
    assert not store.destinations


def test_the_parking_package_exports() -> None:
    import walrelay.pipeline.parking as package

    assert sorted(package.__all__) == [
        "DestinationParking",
        "PAUSED_MESSAGE",
        "ParkedRow",
        "ParkingHost",
        "ParkingIndex",
        "ParkingStore",
        "RESUMED_MESSAGE",
    ]
    assert all(hasattr(package, name) for name in package.__all__)


def test_default_config() -> None:
    cfg = ParkingConfig()
    assert cfg.enabled and cfg.park_after == 3 and cfg.permanent_attempts == 3
    assert cfg.max_attempts is None and cfg.on_dead == "block"
    assert (cfg.backoff.initial, cfg.backoff.multiplier, cfg.backoff.max) == (1.0, 2.0, 300.0)
    assert cfg.max_events == 100_000 and cfg.max_bytes == 1024**3


def _config_with(**parking_keys: Any) -> dict[str, Any]:
    return {
        "source": {"dsn": "host=db", "tables": ["public.t"]},
        "destinations": [
            {"name": "audit", "sink": {"type": "file", "path": "/tmp/a.jsonl"}},
            {"name": "billing", "sink": {"type": "stdout"}, **parking_keys},
        ],
    }


def test_parking_config_key(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(_config_with(parking={"park_after": 7, "on_dead": "skip_dead"}))
    billing = config.destinations[1]
    assert billing.parking.park_after == 7 and billing.parking.on_dead == "skip_dead"
    assert config.destinations[0].parking == ParkingConfig()
    assert not [r for r in caplog.records if "deprecated" in r.message]


def test_old_failed_key_still_works_and_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="walrelay.config"):
        config = parse_config(_config_with(failed={"park_after": 7, "max_events": 50}))
    billing = config.destinations[1]
    assert billing.parking.park_after == 7 and billing.parking.max_events == 50
    assert not hasattr(billing, "failed")
    warnings = [r for r in caplog.records if "deprecated" in r.message]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "destination billing" in warnings[0].message
    assert "rename failed: to parking:" in warnings[0].message


def test_old_failed_key_keeps_its_validation() -> None:
    with pytest.raises(ConfigError, match="park_after"):
        parse_config(_config_with(failed={"park_after": 0}))


def test_both_failed_and_parking_is_a_config_error_naming_the_destination() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config_with(failed={"park_after": 2}, parking={"park_after": 3}))
    message = str(info.value)
    assert "'billing'" in message and "failed:" in message and "parking:" in message
    assert "\n" not in message


def test_cli_lists_parking_and_hides_the_old_name() -> None:
    from click.testing import CliRunner

    from walrelay.cli.main import main

    runner = CliRunner()
    listed = runner.invoke(main, ["--help"])
    assert listed.exit_code == 0
    commands = [line.split()[0] for line in listed.output.split("Commands:")[1].splitlines()[1:]]
    assert "parking" in commands and "failed" not in commands
    for group in ("parking", "failed"):
        result = runner.invoke(main, [group, "--help"])
        assert result.exit_code == 0, result.output
        assert all(c in result.output for c in ("list", "show", "retry", "discard"))


@given(st.text())
def test_key_encoding_round_trips_and_has_no_nul(key: str) -> None:
    text = encode_key(key)
    assert "\x00" not in text
    assert decode_key(text) == key


def test_display_key_and_matching() -> None:
    key = "public.orders\x1f7"
    assert display_key(key) == "public.orders:7"
    assert display_key("public.t\x1f1\x1f\x00\x1f\x00?") == "public.t:1,NULL,?"
    assert display_key("public.nokey") == "public.nokey"
    assert key_matches("public.orders:7", [key]) and key_matches("7", [key])
    assert not key_matches("public.orders:8", [key]) and not key_matches("other:7", [key])


async def test_parked_and_live_deliveries_share_max_in_flight() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"a"}, delay=(0.0, 0.002), seed=3)
    async with Rig(sink, parking(), max_in_flight=2) as rig:
        await rig.put(*[ev(i, "a") for i in range(10)])
        await until(lambda: len(rig.store.table) == 10)
        sink.fail_keys.clear()
        # The backlog drains while live events of other keys keep coming: both get slots.
        await rig.put(*[ev(i, f"k{i}") for i in range(10, 40)])
        await until(lambda: len(sink.delivered) == 40)
        assert sink.max_active <= 2
        assert rig.delivered("a") == list(range(10))
        order = [n_of(e) for e in sink.delivered]
        assert order.index(9) > order.index(10)  # live events did not wait for the whole backlog


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_failures_keep_key_and_barrier_order(seed: int) -> None:
    import random

    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(400):
        r = rng.random()
        if r < 0.02:
            events.append(ev(i))  # a TRUNCATE: a barrier
        elif r < 0.12:
            events.append(ev(i, f"k{rng.randrange(12)}", f"k{rng.randrange(12)}"))  # key change
        else:
            events.append(ev(i, f"k{rng.randrange(12)}"))
    failing = {"k1", "k3", "k7"}
    outage = True

    def fail(e: Event) -> bool:
        return (outage and not failing.isdisjoint(e.keys)) or rng.random() < 0.1

    sink = MemorySink(batch_size=1, fail_when=fail, delay=(0.0, 0.001), seed=seed)
    async with Rig(sink, parking(max_events=60, park_after=2), max_in_flight=6) as rig:
        writer = asyncio.create_task(rig.put(*events))
        await until(lambda: rig.parking.stats()["parked_total"] > 20, within=10)
        outage = False
        await asyncio.wait_for(writer, 20)
        await until(lambda: len(sink.delivered) >= len(events) and not rig.store.table, 20)
        await until(lambda: rig.recorder.finished(events))
    seen = [n_of(e) for e in sink.delivered]
    assert sorted(seen) == list(range(len(events)))  # each exactly once
    position = {n: i for i, n in enumerate(seen)}
    per_key: dict[str, list[int]] = defaultdict(list)
    for n in seen:
        for k in events[n].keys:
            per_key[k].append(n)
    for k, ns in per_key.items():
        assert ns == sorted(ns), f"key {k} out of order"
    for b in (e for e in events if not e.keys):
        nb = n_of(b)
        assert all(position[n] < position[nb] for n in range(nb))
        assert all(position[n] > position[nb] for n in range(nb + 1, len(events)))


async def test_a_replayed_event_that_is_already_parked_is_not_parked_twice() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"a"})
    async with Rig(sink, parking()) as rig:
        e0, e1 = ev(0, "a"), ev(1, "a")
        await rig.put(e0, e1)
        await until(lambda: len(rig.store.table) == 2 and rig.recorder.finished([e0, e1]))
        # After a crash PostgreSQL sends both again (the slot was not confirmed).
        await rig.put(ev(0, "a"), ev(1, "a"))
        await until(lambda: all(c == 2 for c in rig.recorder.counts.values()))
        assert len(rig.store.table) == 2 and rig.parking.index.count == 2
        sink.fail_keys.clear()
        await until(lambda: not rig.store.table)
        assert rig.delivered("a") == [0, 1] and not rig.parking.index.active


@pytest.mark.parametrize(
    "route",
    [
        None,
        Route("order.events", "42", b'{"order":42}', (("event_type", "OrderCreated"),)),
        Route("order.events", None, None),
        Route("t\\x", "k\x00", b"\xff\xfe\x00", (("h\x00", "v\\"), ("h", "w"))),
    ],
)
def test_route_survives_the_table_json(route: Route | None) -> None:
    import orjson

    stored = route_to_json(route)
    text = orjson.dumps(stored).decode()
    assert "\\u0000" not in text  # jsonb cannot hold NUL
    assert route_from_json(orjson.loads(text)) == route
