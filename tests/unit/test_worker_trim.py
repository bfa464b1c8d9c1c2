"""The worker's trim floor (walrelay.worker.trim): commit marks, the replay
floor over the group's partitions, the retention hold, and the commit plan."""

from __future__ import annotations

from typing import Any

import pytest

from walrelay.errors import ConfigError
from walrelay.model import Lsn
from walrelay.worker import trim as trim_module
from walrelay.worker.config import parse_worker_config
from walrelay.worker.offsets import Origin
from walrelay.worker.runner import Worker
from walrelay.worker.trim import (
    FloorHold,
    GroupTrim,
    PartitionMark,
    ReadLsns,
    commit_mark,
    parse_mark,
    replay_floor,
    why_no_floor,
)

TP = ("cdc.public.t", 0)


def part(
    partition: int, committed: int | None, mark: Lsn | None, end: int, low: int = 0
) -> PartitionMark:
    return PartitionMark("cdc.public.t", partition, committed, mark, low, end)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Target:
    def __init__(self) -> None:
        self.floors: list[Lsn] = []

    def trim_below(self, lsn: Lsn) -> None:
        self.floors.append(lsn)


# --------------------------------------------------------------------------- marks


def test_a_commit_mark_reads_back_and_other_metadata_is_no_mark() -> None:
    assert commit_mark(0x1_016B3F48) == "walrelay.lsn=1/16B3F48"
    assert parse_mark(commit_mark(0x1_016B3F48)) == 0x1_016B3F48
    assert parse_mark(commit_mark(7).encode()) == 7
    for other in (None, "", "checkpoint 12", "walrelay.lsn=", "walrelay.lsn=nope"):
        assert parse_mark(other) is None, other


def test_the_mark_is_the_lowest_lsn_read_at_or_past_the_offset() -> None:
    lsns = ReadLsns()
    # A relay in at_least_once mode may write a partition slightly out of id order.
    for offset, lsn in enumerate([100, 130, 110, 140, 120, 150]):
        lsns.read(Origin(TP, 1, offset), lsn)
    assert lsns.mark(TP, 0) == 100
    assert lsns.mark(TP, 1) == 110  # 130 at offset 1, but 110 and 120 come after it
    assert lsns.mark(TP, 3) == 120
    assert lsns.mark(TP, 5) == 150
    # Nothing read past the offset: the last record read (later ones are newer).
    assert lsns.mark(TP, 6) == 150
    assert lsns.mark(("other", 0), 0) is None


def test_a_long_window_is_merged_into_lower_marks_never_higher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trim_module, "WINDOW_ENTRIES", 4)
    lsns = ReadLsns()
    # Offset 0 is stuck at a sink while the rest are read and delivered.
    for offset in range(100):
        lsns.read(Origin(TP, 1, offset), 1000 + offset)
    assert lsns.mark(TP, 0) == 1000
    # Once offset 0 is done, the mark at 1 may be lower than exact (1001), never higher.
    assert lsns.mark(TP, 1) == 1000
    assert lsns.mark(TP, 97) == 1097  # past the merged entries: exact again
    assert lsns.mark(TP, 100) == 1099


def test_a_new_assignment_starts_the_marks_over_and_revoked_partitions_are_forgotten() -> None:
    lsns = ReadLsns()
    lsns.read(Origin(TP, 1, 0), 100)
    lsns.read(Origin(TP, 1, 1), 200)
    lsns.read(Origin(TP, 2, 0), 300)  # reassigned (epoch 2), read from offset 0 again
    assert lsns.mark(TP, 0) == 300
    lsns.retain([("other", 0)])
    assert lsns.mark(TP, 0) is None


# --------------------------------------------------------------------------- the floor


def test_the_floor_is_the_lowest_mark_of_the_partitions_with_a_backlog() -> None:
    parts = [
        part(0, committed=10, mark=500, end=20),  # behind: its records from 500 on come again
        part(1, committed=7, mark=300, end=9),  # behind: from 300 on
        part(2, committed=30, mark=900, end=30),  # caught up: nothing of it comes again
    ]
    assert replay_floor(parts) == 300


def test_with_no_backlog_the_floor_is_the_highest_mark() -> None:
    parts = [part(0, 20, 500, 20), part(1, 9, 700, 9), part(2, None, None, end=0)]
    assert replay_floor(parts) == 700


def test_a_partition_that_may_be_read_from_its_start_stops_trimming() -> None:
    # Never committed, with records: the group starts it at its earliest offset.
    assert replay_floor([part(0, 10, 500, 20), part(1, None, None, end=5)]) is None
    # ... unless the log is empty (records deleted by retention are never read again).
    assert replay_floor([part(0, 10, 500, 20), part(1, None, None, end=5, low=5)]) == 500


def test_a_backlog_without_a_mark_stops_trimming() -> None:
    # Committed by another client (or an older walrelay): its records' LSNs are unknown.
    assert replay_floor([part(0, 10, 500, 20), part(1, 3, None, 9)]) is None
    # Caught up, it does not matter.
    assert replay_floor([part(0, 10, 500, 20), part(1, 9, None, 9)]) == 500


def test_no_partitions_no_floor() -> None:
    assert replay_floor([]) is None
    assert why_no_floor([]) == "no partition has a committed offset yet"


def test_the_log_says_which_partition_stops_trimming() -> None:
    assert "cdc.public.t[1] has records and no committed offset" in why_no_floor(
        [part(0, 10, 500, 20), part(1, None, None, end=5)]
    )
    assert "cdc.public.t[1]'s committed offset carries no walrelay LSN mark" in why_no_floor(
        [part(0, 10, 500, 20), part(1, 3, None, 9)]
    )


# --------------------------------------------------------------------------- the hold


def test_without_retention_the_floor_is_the_last_reading() -> None:
    clock = Clock()
    hold = FloorHold(0.0, clock)
    assert hold.floor() is None
    hold.add(100)
    assert hold.floor() == 100
    clock.now += 1
    hold.add(200)
    assert hold.floor() == 200


def test_the_floor_is_held_back_by_the_retention() -> None:
    clock = Clock()
    hold = FloorHold(60.0, clock)
    hold.add(100)
    clock.now += 30
    hold.add(200)
    assert hold.floor() is None  # no reading 60 s old yet
    clock.now += 30  # the first reading is 60 s old
    hold.add(300)
    assert hold.floor() == 100
    clock.now += 30  # the second is: the lowest since then is 200
    assert hold.floor() == 200
    clock.now += 30
    assert hold.floor() == 300


def test_a_reading_without_floor_blocks_trimming_for_the_retention() -> None:
    clock = Clock()
    hold = FloorHold(60.0, clock)
    hold.add(100)
    clock.now += 60
    assert hold.floor() == 100
    hold.add(None)  # e.g. a partition the group may read from its start
    assert hold.floor() is None
    clock.now += 10
    hold.add(400)
    clock.now += 50
    assert hold.floor() is None  # the empty reading is still in the window
    clock.now += 10
    assert hold.floor() == 400


def test_a_long_retention_keeps_few_readings_and_never_a_higher_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trim_module, "HOLD_READINGS", 3)
    clock = Clock()
    hold = FloorHold(100.0, clock)
    for floor in (100, 100, 100, 150, 120, 200, 300):  # one reading a second
        hold.add(floor)
        clock.now += 1
    assert len(hold._readings) == 3
    # 100 s after the first reading: the lowest since then, 100 (merged, not lost).
    clock.now = 1000.0 + 100
    assert hold.floor() == 100
    clock.now = 1000.0 + 106
    assert hold.floor() == 300


def test_the_oldest_parked_event_holds_the_floor_and_no_floor_trims_nothing() -> None:
    target = Target()
    parked: list[Lsn | None] = [None]
    trim = GroupTrim(targets=lambda: [target], oldest_parked=lambda: parked[0], retention=0.0)
    assert trim.step([part(0, 10, 500, 20)]) == 500
    parked[0] = 250
    assert trim.step([part(0, 12, 600, 20)]) == 250
    assert trim.step([part(0, 12, 600, 20), part(1, None, None, 3)]) is None
    # Parked by another member (read from the state database): it holds the floor too.
    assert trim.step([part(0, 12, 600, 20)], parked=200) == 200
    assert target.floors == [500, 250, 200]


# --------------------------------------------------------------------------- the worker's commits


def _config(**worker: Any) -> Any:
    return parse_worker_config(
        {
            "worker": {
                "kafka": {"bootstrap": "127.0.0.1:9", "group": "g", "topics": [TP[0]]},
                **worker,
            },
            "state": {"dsn": "postgresql://u@127.0.0.1:9/db"},
            "destinations": [{"name": "hook", "sink": {"type": "stdout"}}],
        },
        "worker.yaml",
    )


def _worker() -> Worker:
    return Worker(_config(), name="w")


def test_the_retention_is_a_duration_and_a_bad_one_is_one_clear_line() -> None:
    assert _config(dedup_retention="5m").worker.dedup_retention == 300.0
    assert _config(dedup_retention=0).worker.dedup_retention == 0.0
    with pytest.raises(ConfigError) as e:
        _config(dedup_retention="-1s")
    assert "worker.dedup_retention" in str(e.value) and "\n" not in str(e.value)


async def test_each_offset_the_worker_commits_carries_its_mark() -> None:
    worker = _worker()
    assert worker.config.worker.dedup_retention == 600.0
    epoch = worker.tracker.assign(TP, 40)
    origins = [Origin(TP, epoch, o) for o in (40, 41, 42)]
    for origin, lsn in zip(origins, (0x500, 0x520, 0x510), strict=True):
        worker.tracker.consumed(origin, 1)
        worker.read_lsns.read(origin, lsn)
    worker.tracker.finish(origins[0])
    worker.tracker.finish(origins[1])
    # Offset 42 is pending: a replay from it re-reads 0x510.
    assert await worker._commit_plan(None) == [(TP, 42, "walrelay.lsn=0/510")]
    worker.tracker.committed(TP, 42)
    worker.tracker.finish(origins[2])
    # All done: the next record is newer than the last one read.
    assert await worker._commit_plan(None) == [(TP, 43, "walrelay.lsn=0/510")]
    worker.tracker.revoke(TP)
    assert await worker._commit_plan(None) == []
