"""Safe offsets per partition (walrelay.worker.offsets)."""

from __future__ import annotations

import pytest

from walrelay.worker.offsets import OffsetTracker, Origin, OriginMap

TP = ("cdc.public.t", 3)


def test_safe_offset_stops_at_the_lowest_unfinished_record() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    assert tracker.safe(TP) is None  # nothing read yet: nothing to commit
    origins = [Origin(TP, epoch, o) for o in range(10, 14)]
    for origin in origins:
        tracker.consumed(origin, 2)  # two destinations
    assert tracker.safe(TP) == 10
    # Records finish out of order (different keys in parallel).
    for _ in range(2):
        tracker.finish(origins[2])
    tracker.finish(origins[0])
    assert tracker.safe(TP) == 10  # one destination still has offset 10
    tracker.finish(origins[0])
    assert tracker.safe(TP) == 11
    assert tracker.to_commit() == [(TP, 11)]
    tracker.committed(TP, 11)
    assert tracker.to_commit() == []
    for origin in (origins[1], origins[1], origins[3], origins[3]):
        tracker.finish(origin)
    assert tracker.safe(TP) == 14  # the next record to read
    assert tracker.pending_events() == 0


def test_a_record_no_destination_wants_is_finished_at_once() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.consumed(Origin(TP, epoch, 0), 1)
    tracker.consumed(Origin(TP, epoch, 1), 0)
    assert tracker.safe(TP) == 0
    tracker.finish(Origin(TP, epoch, 0))
    assert tracker.safe(TP) == 2


def test_events_of_an_earlier_assignment_are_ignored() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.consumed(Origin(TP, old, 5), 1)
    tracker.revoke(TP)
    assert not tracker.owns(Origin(TP, old, 5))
    assert tracker.finish(Origin(TP, old, 5)) is False
    new = tracker.assign(TP)
    tracker.consumed(Origin(TP, new, 5), 1)
    # The abandoned copy finishing late must not finish the new one.
    assert tracker.finish(Origin(TP, old, 5)) is False
    assert tracker.safe(TP) == 5
    assert tracker.finish(Origin(TP, new, 5)) is True
    assert tracker.safe(TP) == 6


def test_to_commit_only_for_the_partitions_asked() -> None:
    tracker = OffsetTracker()
    other = ("cdc.public.t", 4)
    e1, e2 = tracker.assign(TP), tracker.assign(other)
    tracker.consumed(Origin(TP, e1, 0), 0)
    tracker.consumed(Origin(other, e2, 7), 0)
    assert tracker.to_commit([other]) == [(other, 8)]
    assert sorted(tracker.to_commit()) == [(TP, 1), (other, 8)]


def test_lag_is_high_watermark_minus_safe_offset() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.consumed(Origin(TP, epoch, 0), 1)
    part = tracker.partitions[TP]
    part.high_watermark = 10
    assert part.lag == 10
    tracker.finish(Origin(TP, epoch, 0))
    assert part.lag == 9


def test_misuse_raises() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.consumed(Origin(TP, epoch, 5), 1)
    with pytest.raises(ValueError, match="offset order"):
        tracker.consumed(Origin(TP, epoch, 4), 1)
    with pytest.raises(ValueError, match="not pending"):
        tracker.finish(Origin(TP, epoch, 9))
    with pytest.raises(ValueError, match="not assigned"):
        tracker.consumed(Origin(("x", 0), 1, 0), 1)


def test_origin_map_is_a_fifo_per_destination_and_event() -> None:
    origins = OriginMap()
    first, again = Origin(TP, 1, 3), Origin(TP, 2, 3)
    ident = (0x10, 0, "public.t")
    origins.add("hook", ident, first)
    origins.add("hook", ident, again)  # the same event read twice
    origins.add("pg", ident, first)
    assert origins.peek("hook", ident) == first
    assert origins.pop("hook", ident) == first
    assert origins.pop("hook", ident) == again
    assert origins.pop("hook", ident) is None
    assert origins.pop("pg", ident) == first
    assert origins.pop("other", ident) is None


def test_offsets_to_commit_with_a_transaction_count_its_events_as_finished() -> None:
    """What a Kafka exactly-once transaction commits with its batch: each
    partition's safe offset as if the batch were delivered -- never past a
    record outside the batch, never for a revoked partition's epoch."""
    tracker = OffsetTracker()
    other = ("cdc.public.t", 4)
    epoch = tracker.assign(TP)
    o2 = tracker.assign(other)
    for offset in range(5):
        tracker.consumed(Origin(TP, epoch, offset), 1)
    tracker.consumed(Origin(other, o2, 7), 0)  # no event: finished at once
    batch = {Origin(TP, epoch, 0): 1, Origin(TP, epoch, 1): 1, Origin(TP, epoch, 3): 1}
    assert tracker.to_commit_after(batch) == [(TP, 2), (other, 8)]
    assert tracker.safe(TP) == 0  # nothing finished yet
    tracker.committed(other, 8)
    stale = {Origin(TP, epoch - 1, 0): 1}  # an earlier assignment's record
    assert tracker.to_commit_after(stale) == [(TP, 0)]  # ignored: offset 0 still pending
    everything = {Origin(TP, epoch, o): 1 for o in range(5)}
    assert tracker.to_commit_after(everything) == [(TP, 5)]
