"""A worker's destinations: revoked partitions' events never reach the sink,
finished events move their partition's safe offset (walrelay.worker.runner)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tests.factories import make_event
from tests.waiting import wait_for
from walrelay.model import Event
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.transforms import ResumeHook
from walrelay.sinks.memory import MemorySink
from walrelay.worker.config import parse_worker_config
from walrelay.worker.offsets import Origin
from walrelay.worker.runner import PartitionHook, Worker, ident

KEPT, REVOKED = ("cdc.public.t", 0), ("cdc.public.t", 1)


def make_worker() -> Worker:
    config = parse_worker_config(
        {
            "worker": {"kafka": {"bootstrap": "k:9092", "group": "g", "topics": ["cdc.public.t"]}},
            "state": {"dsn": "postgresql://localhost/unused"},
            "destinations": [{"name": "mem", "sink": {"type": "stdout"}}],
        }
    )
    return Worker(config, name="test")


async def test_revoked_partitions_are_dropped_and_kept_ones_advance() -> None:
    worker = make_worker()
    tracker = worker.tracker
    epochs = {tp: tracker.assign(tp) for tp in (KEPT, REVOKED)}
    sink = MemorySink(batch_size=10)
    dest = Destination("mem", sink, max_in_flight=4, hooks=[PartitionHook("mem", worker)])
    events = []
    for offset in range(6):
        tp = KEPT if offset % 2 == 0 else REVOKED
        event = make_event(0x100 + offset, 0, keys=(f"k{offset}",))
        origin = Origin(tp, epochs[tp], offset)
        worker.origins.add("mem", ident(event), origin)
        tracker.consumed(origin, 1)
        events.append(event)
        dest.try_put(event)
    tracker.revoke(REVOKED)  # taken away before its events were sent
    dest.start()
    try:
        assert await dest.drain(timeout=5)
    finally:
        await dest.stop()
    assert [e.seq for e in sink.delivered] == [0, 0, 0]
    assert sorted(e.commit_lsn - 0x100 for e in sink.delivered) == [0, 2, 4]
    assert worker.abandoned == 3
    assert tracker.safe(KEPT) == 5  # past offset 4, the last record read
    assert tracker.pending_events() == 0


async def test_the_same_record_read_again_after_reassignment_is_sent_once_owned() -> None:
    worker = make_worker()
    tracker = worker.tracker
    old = tracker.assign(KEPT)
    event = make_event(0x200, 0, keys=("k",))
    worker.origins.add("mem", ident(event), Origin(KEPT, old, 7))
    tracker.consumed(Origin(KEPT, old, 7), 1)
    tracker.revoke(KEPT)
    new = tracker.assign(KEPT, 7)
    again = make_event(0x200, 0, keys=("k",))
    worker.origins.add("mem", ident(again), Origin(KEPT, new, 7))
    tracker.consumed(Origin(KEPT, new, 7), 1)
    sink = MemorySink(batch_size=10)
    dest = Destination("mem", sink, max_in_flight=4, hooks=[PartitionHook("mem", worker)])
    dest.try_put(event)
    dest.try_put(again)
    dest.start()
    try:
        assert await dest.drain(timeout=5)
    finally:
        await dest.stop()
    assert len(sink.delivered) == 1 and sink.delivered[0] is again
    assert tracker.safe(KEPT) == 8


def test_a_destination_with_transforms_retries_failed_steps_before_every_send() -> None:
    """A transform step that failed on an event must never let the event reach
    the sink as it is: the worker's destinations get the ResumeHook too."""
    config = parse_worker_config(
        {
            "worker": {"kafka": {"bootstrap": "k:9092", "group": "g", "topics": ["cdc.public.t"]}},
            "state": {"dsn": "postgresql://localhost/unused"},
            "destinations": [
                {"name": "plain", "sink": {"type": "stdout"}},
                {"name": "shaped", "sink": {"type": "stdout"}, "transforms": [{"exclude": ["x"]}]},
            ],
        }
    )
    worker = Worker(config, name="test")
    shaped = worker._hooks_for("shaped")
    assert [type(h) for h in shaped] == [ResumeHook, PartitionHook]
    assert [type(h) for h in worker._hooks_for("plain")] == [PartitionHook]


async def test_a_revoke_waits_only_for_events_at_the_sink_and_drops_the_rest() -> None:
    """On revoke, the partition's events already at the sink are awaited; its
    buffered ones are dropped, not finished: the safe offset to commit stays
    at the first of them, so the next owner reads them (and nothing is sent
    after the commit). The kept partition flows on."""
    worker = make_worker()
    tracker = worker.tracker
    epochs = {tp: tracker.assign(tp, 0) for tp in (KEPT, REVOKED)}
    release = asyncio.Event()

    async def slow(batch: Sequence[Event]) -> None:
        await release.wait()

    sink = MemorySink(batch_size=1, delay=slow)
    dest = Destination("mem", sink, max_in_flight=1, hooks=[PartitionHook("mem", worker)])
    offsets = {KEPT: 0, REVOKED: 0}
    for n, tp in enumerate([REVOKED, REVOKED, KEPT, REVOKED, KEPT]):
        event = make_event(0x100 + n, 0, keys=(f"k{n}",))
        origin = Origin(tp, epochs[tp], offsets[tp])
        offsets[tp] += 1
        worker.origins.add("mem", ident(event), origin)
        tracker.consumed(origin, 1)
        dest.try_put(event)
    dest.start()
    try:
        await wait_for(lambda: sink.calls == 1, what="the first event at the sink")
        revoke = asyncio.create_task(worker._drain_revoking([REVOKED], timeout=5))
        await asyncio.sleep(0)
        assert not revoke.done()  # waits for the event at the sink
        release.set()
        assert await revoke
        assert tracker.safe(REVOKED) == 1  # past the delivered one, not past the dropped
        assert await dest.drain(timeout=5)
    finally:
        await dest.stop()
    assert [e.commit_lsn - 0x100 for e in sink.delivered] == [0, 2, 4]
    assert tracker.safe(REVOKED) == 1 and tracker.safe(KEPT) == 2
    assert worker.abandoned == 2
