"""Status updates never go below the slot's position when the run began."""

from __future__ import annotations

from walrelay.engine.feedback import Feedback
from walrelay.model import Lsn
from walrelay.pipeline.lsn import LsnTracker


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Lsn] = []

    def send_status(self, flushed: Lsn, *, reply: bool = False) -> None:
        self.sent.append(flushed)


def test_a_new_slots_snapshot_transaction_does_not_move_the_slot_back() -> None:
    point = 0x1000
    tracker = LsnTracker(start=point - 1)  # the snapshot transaction is point - 1
    tracker.begin(point - 1)
    feedback = Feedback(
        tracker, status_interval=1.0, trim_targets=lambda: [], oldest_parked=lambda: None
    )
    feedback.slot_floor = point
    stream = Recorder()
    feedback.send_status(stream)  # type: ignore[arg-type]
    assert stream.sent == [point]
