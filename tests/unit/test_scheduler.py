"""Destination: scheduling, per-key order, barriers, backpressure, retries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import pytest

from tests.factories import numbered_event as ev
from tests.waiting import wait_for
from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.buffer import BufferClosed
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.scheduler import (
    RECORDING_FACTOR,
    Destination,
    FailureDecision,
    OnFailure,
)
from walrelay.sinks.base import Sink
from walrelay.sinks.memory import MemorySink

FAST = Backoff(initial=0.001, multiplier=2.0, maximum=0.005)


@pytest.fixture(autouse=True)
def _sizes_are_body_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count buffer space in body bytes: no per-event overhead."""
    monkeypatch.setattr("walrelay.model.EVENT_OVERHEAD_BYTES", 0)


def order_key(e: Event) -> tuple[int, int]:
    return (e.commit_lsn, e.seq)


async def until(cond: Callable[[], bool]) -> None:
    """Wait for a condition on stats that have no awaitable of their own."""
    await wait_for(cond, within=5, interval=0.001, what="a scheduler counter")


class Recorder(DeliveryHook):
    """A delivery hook counting how often each event was finished."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, int]] = Counter()
        self.batches = 0

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        self.batches += 1
        for e in events:
            self.counts[order_key(e)] += 1

    def assert_once(self, events: Sequence[Event]) -> None:
        assert self.counts == Counter(order_key(e) for e in events)
        assert set(self.counts.values()) <= {1}


class Verdict(DeliveryHook):
    """A delivery hook whose verdict on a failed batch is ``decide``'s."""

    def __init__(self, decide: OnFailure) -> None:
        self.decide = decide

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision | None:
        return await self.decide(batch, error, attempts)


def assert_per_key_order(events: Sequence[Event], seen: Sequence[Event]) -> None:
    """For every key, ``seen`` holds that key's events in id order."""
    per_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in seen:
        for k in e.keys:
            per_key[k].append(order_key(e))
    expected: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        for k in e.keys:
            expected[k].append(order_key(e))
    assert per_key == expected


def test_memory_sink_satisfies_the_protocol() -> None:
    assert isinstance(MemorySink(), Sink)


async def test_per_key_order_under_parallel_delivery_with_random_delays() -> None:
    rng = random.Random(7)
    events = []
    for i in range(3000):
        k = f"k{rng.randrange(60)}"
        if rng.random() < 0.1:  # an UPDATE that changed the key
            events.append(ev(i, k, f"k{rng.randrange(60)}"))
        else:
            events.append(ev(i, k))
    started: list[Event] = []
    dest: Destination | None = None
    max_seen = 0

    async def delay(batch: Sequence[Event]) -> None:
        nonlocal max_seen
        assert dest is not None
        max_seen = max(max_seen, dest.in_flight)
        started.extend(batch)
        await asyncio.sleep(rng.uniform(0, 0.002))

    sink = MemorySink(batch_size=4, delay=delay, track_keys=True)
    recorder = Recorder()
    dest = Destination("d", sink, max_in_flight=32, hooks=[recorder])
    dest.start()
    for e in events:
        await dest.put(e)
    assert await dest.drain(timeout=30)
    await dest.stop()

    assert sink.key_overlaps == []  # no key was ever in two deliveries at once
    assert_per_key_order(events, started)  # started in per-key id order
    assert_per_key_order(events, sink.delivered)  # and completed so
    assert sorted(sink.delivered, key=order_key) == events
    assert 1 < max_seen <= 32
    assert sink.max_active > 1
    assert all(len(b) <= 4 for b in sink.batches)
    recorder.assert_once(events)
    assert dest.delivered_total == len(events)
    assert dest.buffered_events == 0 and dest.buffered_bytes == 0 and dest.in_flight == 0


class Gates:
    """A sink delay that blocks each event id until the test opens its gate."""

    def __init__(self) -> None:
        self.gates: dict[tuple[int, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[tuple[int, int]] = []

    def open(self, e: Event) -> None:
        self.gates[order_key(e)].set()

    async def __call__(self, batch: Sequence[Event]) -> None:
        for e in batch:
            self.started.append(order_key(e))
        for e in batch:
            await self.gates[order_key(e)].wait()


async def test_key_change_update_holds_both_keys() -> None:
    gates = Gates()
    sink = MemorySink(batch_size=10, delay=gates, track_keys=True)
    dest = Destination("d", sink, max_in_flight=10)
    old, move, new, other = ev(0, "old"), ev(1, "old", "new"), ev(2, "new"), ev(3, "x")
    dest.start()
    for e in (old, move, new, other):
        await dest.put(e)
    await until(lambda: len(gates.started) == 2)
    assert gates.started == [order_key(old), order_key(other)]  # one batch
    gates.open(other)
    gates.open(new)
    gates.open(move)
    for _ in range(10):  # a negative check: give a wrong scheduler the chance
        await asyncio.sleep(0)
    # `new` did not start although its key is not in flight: the key-change
    # UPDATE before it holds it.
    assert len(gates.started) == 2
    gates.open(old)
    assert await dest.drain(timeout=5)
    assert gates.started == [order_key(e) for e in (old, other, move, new)]
    assert sink.delivered == [old, other, move, new]
    assert sink.key_overlaps == []
    await dest.stop()


async def test_barrier_goes_alone_after_everything_before_it() -> None:
    rng = random.Random(3)
    events = [ev(i, f"k{i % 7}") for i in range(40)]
    barrier = ev(40)
    after = [ev(i, f"k{i % 7}") for i in range(41, 80)]
    active_at_barrier: list[int] = []
    sink_ref: list[MemorySink] = []

    async def delay(batch: Sequence[Event]) -> None:
        if not batch[0].keys:
            active_at_barrier.append(sink_ref[0].active)
            assert len(batch) == 1
        await asyncio.sleep(rng.uniform(0, 0.003))

    sink = MemorySink(batch_size=3, delay=delay)
    sink_ref.append(sink)
    recorder = Recorder()
    dest = Destination("d", sink, max_in_flight=8, hooks=[recorder])
    dest.start()
    for e in [*events, barrier, *after]:
        await dest.put(e)
    assert await dest.drain(timeout=10)
    await dest.stop()
    position = sink.delivered.index(barrier)
    assert sorted(sink.delivered[:position], key=order_key) == events
    assert sorted(sink.delivered[position + 1 :], key=order_key) == after
    assert [barrier] in sink.batches
    assert active_at_barrier == [1]  # nothing else was being delivered meanwhile
    recorder.assert_once([*events, barrier, *after])


async def test_put_blocks_when_the_buffer_is_full_and_resumes() -> None:
    gate = asyncio.Event()

    async def delay(batch: Sequence[Event]) -> None:
        await gate.wait()

    sink = MemorySink(batch_size=100, delay=delay)
    dest = Destination("d", sink, max_in_flight=100, max_buffer_bytes=1000)
    dest.start()
    events = [ev(i, f"k{i}", size=100) for i in range(25)]
    producer = asyncio.create_task(_put_all(dest, events))
    await until(lambda: dest.blocked)
    assert dest.buffered_bytes == 1000 and dest.buffered_events + dest.in_flight == 10
    assert not producer.done()
    gate.set()
    await producer
    assert await dest.drain(timeout=5)
    assert sorted(sink.delivered, key=order_key) == events
    assert not dest.blocked
    await dest.stop()


async def _put_all(dest: Destination, events: Sequence[Event]) -> None:
    for e in events:
        await dest.put(e)


async def test_retries_keep_order_and_deliver_each_event_once() -> None:
    rng = random.Random(11)
    events = [ev(i, f"k{i % 13}") for i in range(400)]
    attempts: Counter[tuple[int, int]] = Counter()

    def flaky(e: Event) -> bool:
        attempts[order_key(e)] += 1
        return attempts[order_key(e)] <= 2 and rng.random() < 0.3

    sink = MemorySink(batch_size=5, fail_when=flaky, delay=(0.0, 0.001), seed=5, track_keys=True)
    recorder = Recorder()
    dest = Destination("d", sink, max_in_flight=16, backoff=FAST, hooks=[recorder])
    dest.start()
    await _put_all(dest, events)
    assert await dest.drain(timeout=20)
    await dest.stop()
    assert sink.failures > 0 and dest.failures_total == sink.failures
    assert dest.last_error is not None and "injected failure" in dest.last_error
    assert len(sink.delivered) == len(events)  # each exactly once on success
    assert sorted(sink.delivered, key=order_key) == events
    assert_per_key_order(events, sink.delivered)
    assert sink.key_overlaps == []
    recorder.assert_once(events)
    assert dest.delivered_total == len(events)


async def test_failing_key_holds_only_its_own_key() -> None:
    sink = MemorySink(batch_size=1, fail_keys={"bad"})
    dest = Destination("d", sink, max_in_flight=4, backoff=FAST)
    events = [ev(0, "bad"), ev(1, "good"), ev(2, "bad"), ev(3, "good")]
    dest.start()
    await _put_all(dest, events)
    await sink.wait_delivered(2)
    await until(lambda: dest.failures_total >= 3)
    assert sink.delivered == [events[1], events[3]]
    assert dest.in_flight == 1  # the second "bad" waits behind the first
    sink.fail_keys.clear()
    assert await dest.drain(timeout=5)
    assert sink.delivered[2:] == [events[0], events[2]]
    await dest.stop()


class SlotSink(MemorySink):
    """A sink delivering on two connections: at most two batches in flight."""

    max_batches = 2


async def test_max_batches_cuts_a_batch_when_a_slot_is_free() -> None:
    gates = Gates()
    sink = SlotSink(batch_size=10, delay=gates, track_keys=True)
    dest = Destination("d", sink, max_in_flight=100)
    first = [ev(0, "a"), ev(1, "b")]
    rest = [ev(i, f"k{i}") for i in range(2, 32)]
    dest.start()
    await dest.put(first[0])  # one at a time: each is a batch of its own
    await until(lambda: len(gates.started) == 1)
    await dest.put(first[1])
    await until(lambda: len(gates.started) == 2)
    for e in rest:
        await dest.put(e)
        await asyncio.sleep(0)  # the scheduler runs between arrivals
    assert len(gates.started) == 2  # both slots busy: the rest waits in the buffer
    assert dest.buffered_events == len(rest)
    for e in first + rest:
        gates.open(e)
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert sink.max_active == 2
    assert sorted(len(b) for b in sink.batches) == [1, 1, 10, 10, 10]
    assert sorted(sink.delivered, key=order_key) == first + rest


class SlowRecord(DeliveryHook):
    """An after_send hook (like the ledger's record) that waits for the test."""

    def __init__(self) -> None:
        self.recording: list[Event] = []
        self.release = asyncio.Event()

    async def after_send(self, events: Sequence[Event]) -> None:
        self.recording.extend(events)
        await self.release.wait()


async def test_a_sent_batch_leaves_its_slot_while_its_record_waits() -> None:
    record = SlowRecord()
    sink = MemorySink(batch_size=1)
    dest = Destination("d", sink, max_in_flight=2, hooks=[record])
    events = [ev(0, "a"), ev(1, "b"), ev(2, "c"), ev(3, "a"), ev(4, "d")]
    dest.start()
    await _put_all(dest, events)
    # a, b sent and recording: their slots go to c and d; the second "a"
    # waits behind the first one, which is not finished until recorded.
    await until(lambda: len(record.recording) == 4)
    assert sorted(sink.delivered, key=order_key) == [events[0], events[1], events[2], events[4]]
    assert sink.max_active <= 2
    assert dest.delivered_total == 0  # none finished: the LSN stays behind them
    record.release.set()
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert sink.delivered[-1] == events[3]
    assert dest.delivered_total == len(events)


async def test_events_being_recorded_are_capped() -> None:
    # What a crash can resend (sent, not yet recorded) stays bounded.
    record = SlowRecord()
    sink = MemorySink(batch_size=1)
    dest = Destination("d", sink, max_in_flight=3, hooks=[record])
    cap = 3 * RECORDING_FACTOR
    events = [ev(i, f"k{i}") for i in range(3 * cap)]
    dest.start()
    await _put_all(dest, events)
    await until(lambda: len(record.recording) == cap)
    for _ in range(20):
        await asyncio.sleep(0)  # the scheduler gets its turns: nothing more goes out
    assert len(sink.delivered) == cap
    record.release.set()
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert sorted(sink.delivered, key=order_key) == events
    assert sink.max_active <= 3


async def test_with_max_in_flight_1_an_event_is_recorded_before_the_next_goes() -> None:
    record = SlowRecord()
    sink = MemorySink(batch_size=1)
    dest = Destination("d", sink, max_in_flight=1, hooks=[record])
    events = [ev(i, f"k{i}") for i in range(3)]
    dest.start()
    await _put_all(dest, events)
    await until(lambda: len(record.recording) == 1)
    for _ in range(20):
        await asyncio.sleep(0)  # the scheduler gets its turns: nothing more goes out
    assert sink.delivered == events[:1]
    record.release.set()
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert sink.delivered == events  # one at a time, in order


async def test_a_batch_waiting_to_be_retried_leaves_its_slot() -> None:
    sink = SlotSink(batch_size=1, fail_keys={"bad"})
    dest = Destination("d", sink, max_in_flight=10, backoff=FAST)
    events = [ev(0, "bad"), ev(1, "bad2"), *(ev(i, f"good{i}") for i in range(2, 8))]
    sink.fail_keys.add("bad2")
    dest.start()
    await _put_all(dest, events)
    await sink.wait_delivered(6)  # both slots' batches fail again and again
    assert sorted(sink.delivered, key=order_key) == events[2:]
    sink.fail_keys.clear()
    assert await dest.drain(timeout=5)
    assert sorted(sink.delivered[6:], key=order_key) == events[:2]
    assert sink.max_active <= 2
    await dest.stop()


async def test_unexpected_exception_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink(batch_size=10, fail_times=2, error=lambda batch: RuntimeError("boom"))
    dest = Destination("d", sink, backoff=FAST)
    dest.start()
    events = [ev(0, "a"), ev(1, "b")]
    with caplog.at_level(logging.WARNING, logger="walrelay.pipeline.scheduler"):
        await _put_all(dest, events)
        assert await dest.drain(timeout=5)
    await dest.stop()
    assert sink.delivered == events
    assert dest.failures_total == 2
    assert dest.last_error == "RuntimeError: boom"
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(bugs) == 2 and all(r.exc_info for r in bugs)


async def test_on_failure_hook_can_park() -> None:
    seen: list[tuple[int, str, int]] = []

    async def on_failure(batch: Sequence[Event], error: BaseException, n: int) -> FailureDecision:
        seen.append((len(batch), str(error), n))
        return "parked" if n >= 3 else "retry"

    sink = MemorySink(batch_size=10, fail_keys={"a"}, retry_after=0.0)
    recorder = Recorder()
    dest = Destination(
        "d", sink, backoff=FAST, hooks=[recorder, Verdict(on_failure)], max_in_flight=10
    )
    dest.start()
    events = [ev(0, "a"), ev(1, "b")]
    await _put_all(dest, events)
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert [n for _, _, n in seen] == [1, 2, 3]
    assert dest.parked_total == 2 and dest.delivered_total == 0  # one batch of two
    assert sink.delivered == []
    recorder.assert_once(events)


async def test_ordered_sink_sees_exact_id_order() -> None:
    rng = random.Random(5)
    events = [ev(i, f"k{rng.randrange(5)}") if i % 97 else ev(i) for i in range(1, 1500)]
    sink = MemorySink(batch_size=50, ordered=True, delay=(0.0, 0.0005), seed=2)
    recorder = Recorder()
    dest = Destination("d", sink, max_in_flight=32, hooks=[recorder])
    dest.start()
    await _put_all(dest, events)
    assert await dest.drain(timeout=20)
    await dest.stop()
    assert sink.delivered == events
    assert sink.max_active == 1
    assert all(len(b) <= 50 for b in sink.batches)
    assert all(len(b) == 1 for b in sink.batches if not b[0].keys)
    assert max(len(b) for b in sink.batches) == 50  # batching happened
    recorder.assert_once(events)


async def test_ordered_sink_retries_in_place() -> None:
    sink = MemorySink(batch_size=3, ordered=True, fail_ids={ev(4, "a").id})
    dest = Destination("d", sink, backoff=FAST)
    events = [ev(i, "a" if i % 2 else "b") for i in range(9)]
    dest.start()
    await _put_all(dest, events)
    await until(lambda: dest.failures_total >= 2)
    assert sink.delivered == events[:3]  # nothing overtakes the failing batch
    sink.fail_ids.clear()
    assert await dest.drain(timeout=5)
    assert sink.delivered == events
    await dest.stop()


async def test_drain_times_out_then_stop_cancels_cleanly() -> None:
    gate = asyncio.Event()
    cancelled = 0

    async def delay(batch: Sequence[Event]) -> None:
        nonlocal cancelled
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    sink = MemorySink(batch_size=1, delay=delay)
    recorder = Recorder()
    dest = Destination("d", sink, max_in_flight=2, max_buffer_bytes=30, hooks=[recorder])
    assert await dest.drain(timeout=0) is True  # nothing put
    dest.start()
    dest.start()  # idempotent
    await _put_all(dest, [ev(0, "a"), ev(1, "b"), ev(2, "c")])
    await until(lambda: dest.in_flight == 2)
    assert await dest.drain(timeout=0.01) is False
    blocked = asyncio.create_task(dest.put(ev(3, "d")))
    await until(lambda: dest.blocked)
    drainer = asyncio.create_task(dest.drain())
    await asyncio.sleep(0)
    await dest.stop()
    assert cancelled == 2
    assert await drainer is False
    with pytest.raises(BufferClosed):
        await blocked
    with pytest.raises(BufferClosed):
        await dest.put(ev(4, "e"))
    with pytest.raises(RuntimeError):
        dest.start()
    assert recorder.counts == Counter()  # nothing finished, nothing confirmed
    assert sink.delivered == []


async def test_events_put_before_start_are_delivered() -> None:
    sink = MemorySink(batch_size=100)
    dest = Destination("d", sink, max_in_flight=100)
    events = [ev(i, f"k{i % 3}") for i in range(30)]
    await _put_all(dest, events)
    assert dest.buffered_events == 30 and dest.in_flight == 0
    dest.start()
    assert await dest.drain(timeout=5)
    assert sorted(sink.delivered, key=order_key) == events
    assert_per_key_order(events, sink.delivered)
    # Three keys, one event of a key in flight at a time: batches of <= 3.
    assert all(len(b) <= 3 for b in sink.batches)
    await dest.stop()


async def test_sink_error_retry_after_is_honoured() -> None:
    assert FAST.delay(1, retry_after=0.003) == 0.003
    assert FAST.delay(1, retry_after=100) == FAST.maximum
    assert Backoff().delay(5, retry_after=-1) == 0.0


def test_backoff_full_jitter_and_cap() -> None:
    b = Backoff(initial=0.2, multiplier=2.0, maximum=30.0)
    assert [b.ceiling(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    assert b.ceiling(9) == 30.0
    assert b.ceiling(10_000) == 30.0  # no overflow
    rng = random.Random(1)
    delays = [b.delay(3, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 0.8 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 0.6
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)


async def test_sink_error_from_errors_module_is_the_retry_signal() -> None:
    calls = 0

    async def delay(batch: Sequence[Event]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SinkError("temporarily down", retry_after=0.001)

    sink = MemorySink(batch_size=10, delay=delay)
    dest = Destination("d", sink, backoff=Backoff(initial=10, maximum=10))
    dest.start()
    await dest.put(ev(0, "a"))
    # retry_after (1 ms) wins over the 10 s backoff ceiling.
    assert await dest.drain(timeout=5)
    assert dest.failures_total == 1
    await dest.stop()


async def test_hooks_run_in_order_before_and_in_reverse_after_a_send() -> None:
    calls: list[str] = []

    class Named(DeliveryHook):
        def __init__(self, name: str) -> None:
            self.name = name

        async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
            calls.append(f"before {self.name}")
            return events[1:] if self.name == "ledger" else events  # a ledger drops a replay

        async def after_send(self, events: Sequence[Event]) -> None:
            calls.append(f"after {self.name} {len(events)}")

    sink = MemorySink(batch_size=10)
    dest = Destination("d", sink, hooks=[Named("ledger"), Named("failpoints"), Recorder()])
    batch = [ev(0, "a"), ev(1, "b")]
    await dest.send(batch)
    assert calls == [
        "before ledger",
        "before failpoints",
        "after failpoints 1",
        "after ledger 1",
    ]
    assert sink.delivered == batch[1:]


class IdleParking:
    """Parking with nothing to divert; ``idle`` as the test sets it."""

    def __init__(self, idle: bool) -> None:
        self.idle = idle
        self.paused = False

    async def wait_unpaused(self) -> None: ...

    def blocks(self, batch: Sequence[Event]) -> list[Event]:
        return []

    def divert(self, events: list[Event]) -> bool:
        return True

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        return "retry"

    def wake(self) -> None: ...


async def delivering_tasks(parking: IdleParking | None) -> tuple[set[str], MemorySink]:
    """Deliver 40 events of distinct keys, one per batch, 4 in flight: the
    delivery tasks that called the sink, and the sink."""
    tasks: set[str] = set()

    async def note_task(batch: Sequence[Event]) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task.get_name())  # unique per task (an id() may be reused)
        await asyncio.sleep(0)

    events = [ev(i, f"k{i}") for i in range(40)]
    sink = MemorySink(batch_size=1, delay=note_task, track_keys=True)
    dest = Destination(
        "d",
        sink,
        max_in_flight=4,
        parking=None if parking is None else (lambda _: parking),
    )
    for e in events:
        await dest.put(e)
    dest.start()
    assert await dest.drain(timeout=30)
    await dest.stop()
    assert sorted(sink.delivered, key=order_key) == events and sink.key_overlaps == []
    assert dest.delivered_total == len(events) and dest.in_flight == 0
    return tasks, sink


@pytest.mark.parametrize("parked", [None, IdleParking(idle=True)], ids=["no parking", "idle"])
async def test_a_finished_delivery_task_takes_the_next_batch_itself(
    parked: IdleParking | None,
) -> None:
    """No task per batch: the 4 tasks started for the 4 slots deliver all 40 events."""
    tasks, sink = await delivering_tasks(parked)
    assert len(tasks) <= 4 and sink.max_active == 4


async def test_with_events_parked_the_scheduler_hands_out_every_freed_slot() -> None:
    """While parking is not idle a freed slot goes back to the scheduler (the
    parked events get the first go at it): a task per batch, as before."""
    tasks, _ = await delivering_tasks(IdleParking(idle=False))
    assert len(tasks) == 40


class ReservingParking(IdleParking):
    """Parking whose retry loop, when woken, reserves one slot for a parked event."""

    def __init__(self, dest: Callable[[], Destination], sink: MemorySink) -> None:
        super().__init__(idle=False)
        self._dest = dest
        self.sink = sink
        self.granted = 0
        self.live_sent_then = -1  # live events the sink had taken at the grant

    def wake(self) -> None:
        if not self.granted:
            self.granted = self._dest().reserve(1)
            self.live_sent_then = len(self.sink.delivered)


async def test_parking_gets_the_first_go_at_a_slot_freed_while_recording() -> None:
    # A parked event's retry competes with the live stream for max_in_flight:
    # a slot a batch leaves while its record waits goes first to parking, as
    # a slot of a finished batch does; else a steady stream starves it.
    record = SlowRecord()
    holder: list[Destination] = []
    sink = MemorySink(batch_size=1)
    parking = ReservingParking(lambda: holder[0], sink)
    dest = Destination("d", sink, max_in_flight=2, hooks=[record], parking=lambda _: parking)
    holder.append(dest)
    events = [ev(i, f"k{i}") for i in range(6)]
    dest.start()
    await _put_all(dest, events)
    await until(lambda: len(record.recording) >= 2)
    # The first freed slot went to parking, before any live event past the
    # first two (then only what the rest of the bound allows goes).
    assert parking.granted == 1 and parking.live_sent_then <= 2
    dest.release(1)
    record.release.set()
    assert await dest.drain(timeout=5)
    await dest.stop()
    assert sorted(sink.delivered, key=order_key) == events
