"""LsnTracker: the LSN walrelay may confirm to PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from tests.factories import make_event
from walrelay.pipeline.lsn import LsnTracker


def test_single_transaction() -> None:
    t = LsnTracker()
    t.begin(100)
    t.add(100, 3)
    t.seal(100, 110)
    assert t.confirmed == 0
    t.finish(100, 2)
    assert t.confirmed == 0
    t.finish(100)
    assert t.confirmed == 110
    assert t.pending_transactions == 0


def test_start_lsn_is_the_floor() -> None:
    t = LsnTracker(start=500)
    assert t.confirmed == 500
    t.keepalive(400)
    assert t.confirmed == 500


def test_later_transaction_finishing_first_waits_for_earlier() -> None:
    t = LsnTracker()
    for lsn in (100, 200, 300):
        t.begin(lsn)
        t.add(lsn, 1)
        t.seal(lsn, lsn + 10)
    t.finish(300)
    t.finish(200)
    assert t.confirmed == 0
    t.finish(100)
    assert t.confirmed == 310


def test_finish_before_seal_is_not_done_until_sealed() -> None:
    t = LsnTracker()
    t.begin(100)
    t.add(100, 1)
    t.finish(100)
    assert t.confirmed == 0
    t.add(100, 1)  # still open: more events may come
    t.finish(100)
    t.seal(100, 120)
    assert t.confirmed == 120


def test_zero_event_transaction_finishes_when_sealed() -> None:
    t = LsnTracker()
    t.begin(100)
    assert t.confirmed == 0
    t.seal(100, 130)
    assert t.confirmed == 130


def test_keepalive_only_when_nothing_pending() -> None:
    t = LsnTracker()
    t.keepalive(50)
    assert t.confirmed == 50
    t.begin(100)
    t.add(100)
    t.keepalive(500)  # server is ahead, but 100 is pending
    assert t.confirmed == 50
    t.seal(100, 110)
    assert t.confirmed == 50
    t.finish(100)
    # Nothing pending any more: the keepalive seen meanwhile applies.
    assert t.confirmed == 500
    t.keepalive(400)  # never backwards
    assert t.confirmed == 500
    t.begin(600)
    t.keepalive(700)
    assert t.confirmed == 500
    t.seal(600, 610)
    assert t.confirmed == 700


def test_end_lsn_never_passes_a_pending_commit() -> None:
    # A bogus end LSN beyond the next transaction's commit LSN is clamped.
    t = LsnTracker()
    t.begin(100)
    t.begin(200)
    t.add(200)
    t.seal(200, 210)
    t.seal(100, 250)
    assert t.confirmed == 200


def test_errors() -> None:
    t = LsnTracker()
    t.begin(100)
    with pytest.raises(ValueError, match="increasing"):
        t.begin(100)
    with pytest.raises(ValueError, match="increasing"):
        t.begin(90)
    t.add(100, 2)
    with pytest.raises(ValueError, match="only 2"):
        t.finish(100, 3)
    with pytest.raises(ValueError, match="not begun"):
        t.add(999)
    with pytest.raises(ValueError, match="negative"):
        t.add(100, -1)
    with pytest.raises(ValueError, match="before commit"):
        t.seal(100, 99)
    t.seal(100, 110)
    with pytest.raises(ValueError, match="sealed"):
        t.add(100)
    with pytest.raises(ValueError, match="sealed"):
        t.seal(100, 110)
    t.finish(100, 2)
    with pytest.raises(ValueError, match="no pending events"):
        t.finish(100)
    with pytest.raises(ValueError, match="not begun"):
        t.seal(555, 560)
    t2 = LsnTracker()
    t2.keepalive(1000)
    with pytest.raises(ValueError, match="below the confirmed"):
        t2.begin(900)


def test_per_destination_accounting() -> None:
    t = LsnTracker()
    t.begin(100)
    t.add(100, 2, "kafka")
    t.add(100, 1, "webhook")
    t.seal(100, 110)
    t.begin(200)
    t.add(200, 1, "kafka")
    t.seal(200, 210)
    assert t.pending_events() == 4
    assert t.pending_events("kafka") == 3
    assert t.pending_events("webhook") == 1
    assert t.pending_events("nope") == 0
    assert t.oldest_pending_commit_lsn() == 100
    assert t.oldest_pending_commit_lsn("kafka") == 100
    assert t.oldest_pending_commit_lsn("webhook") == 100
    assert t.oldest_pending_commit_lsn("nope") is None
    t.finish(100, 2, "kafka")
    assert t.oldest_pending_commit_lsn("kafka") == 200
    assert t.oldest_pending_commit_lsn("webhook") == 100
    assert t.confirmed == 0
    with pytest.raises(ValueError, match="for 'kafka'"):
        t.finish(100, 1, "kafka")
    t.finish(100, 1, "webhook")
    assert t.confirmed == 110
    assert t.oldest_pending_commit_lsn("webhook") is None
    t.finish(200, 1, "kafka")
    assert t.confirmed == 210
    assert t.pending_events() == 0
    assert t.oldest_pending_commit_lsn() is None
    assert t.oldest_pending_commit_lsn("kafka") is None


def test_oldest_pending_skips_open_transaction_with_nothing_pending() -> None:
    t = LsnTracker()
    t.begin(100)
    t.add(100, 1, "d")
    t.finish(100, 1, "d")  # open, nothing pending for d right now
    t.add(100, 1, "e")
    assert t.oldest_pending_commit_lsn("d") is None
    t.add(100, 1, "d")
    assert t.oldest_pending_commit_lsn("d") == 100


def test_finish_events_groups_by_commit_lsn() -> None:
    t = LsnTracker()
    t.begin(100)
    t.add(100, 2, "d")
    t.seal(100, 110)
    t.begin(200)
    t.add(200, 3, "d")
    t.seal(200, 210)
    t.finish_events([make_event(100, 0), make_event(100, 1), make_event(200, 0)], "d")
    assert t.confirmed == 110
    assert t.pending_events("d") == 2
    t.finish_events([make_event(200, 1), make_event(200, 2)], "d")
    assert t.confirmed == 210


def test_many_transactions_are_retired_not_kept() -> None:
    t = LsnTracker()
    for i in range(1, 10_001):
        lsn = i * 100
        t.begin(lsn)
        t.add(lsn, 1, "d")
        t.seal(lsn, lsn + 50)
        t.finish(lsn, 1, "d")
    assert t.confirmed == 10_000 * 100 + 50
    assert t.last_begun == 10_000 * 100
    assert t.pending_transactions == 0
    assert not t._txns
    assert not t._dest_order["d"]


DESTS = ("a", "b", "c")


class TrackerMachine(RuleBasedStateMachine):
    """Random interleavings of the stream side and the delivery side.

    The model keeps, per transaction, events added and finished per
    destination. Invariants: ``confirmed`` never goes backwards and never
    passes the commit LSN of a transaction that is unsealed or has an event
    not finished; and it is as high as the rules allow (liveness).
    """

    txns = Bundle("txns")

    @initialize()
    def setup(self) -> None:
        self.tracker = LsnTracker()
        self.next_lsn = 100  # the next begin is at or after this
        self.added: dict[int, dict[str, int]] = {}
        self.finished: dict[int, dict[str, int]] = {}
        self.sealed: dict[int, int] = {}
        self.order: list[int] = []
        self.wal_end = 0
        self.last_confirmed = 0
        self.model_confirmed = 0

    @rule(target=txns, gap=st.integers(0, 50))
    def begin(self, gap: int) -> int:
        lsn = self.next_lsn + gap
        self.tracker.begin(lsn)
        self.next_lsn = lsn + 20  # room for the end LSN and keepalives
        self.added[lsn] = dict.fromkeys(DESTS, 0)
        self.finished[lsn] = dict.fromkeys(DESTS, 0)
        self.order.append(lsn)
        return lsn

    @rule(lsn=txns, dest=st.sampled_from(DESTS), count=st.integers(1, 4))
    def add(self, lsn: int, dest: str, count: int) -> None:
        if lsn in self.sealed:
            with pytest.raises(ValueError):
                self.tracker.add(lsn, count, dest)
            return
        self.tracker.add(lsn, count, dest)
        self.added[lsn][dest] += count

    @rule(lsn=txns, end=st.integers(1, 19))
    def seal(self, lsn: int, end: int) -> None:
        if lsn in self.sealed:
            return
        self.tracker.seal(lsn, lsn + end)
        self.sealed[lsn] = lsn + end

    @rule(lsn=txns, dest=st.sampled_from(DESTS), data=st.data())
    def finish(self, lsn: int, dest: str, data: st.DataObject) -> None:
        left = self.added[lsn][dest] - self.finished[lsn][dest]
        if not left:
            with pytest.raises(ValueError):
                self.tracker.finish(lsn, 1, dest)
            return
        count = data.draw(st.integers(1, left))
        self.tracker.finish(lsn, count, dest)
        self.finished[lsn][dest] += count

    @rule(back=st.integers(0, 30))
    def keepalive(self, back: int) -> None:
        # The server has sent everything before wal_end, so the next
        # transaction it sends commits at or after it.
        wal_end = max(0, self.next_lsn - back)
        self.tracker.keepalive(wal_end)
        self.wal_end = max(self.wal_end, wal_end)

    def _done(self, lsn: int) -> bool:
        return lsn in self.sealed and self.added[lsn] == self.finished[lsn]

    @invariant()
    def confirmed_is_safe_and_monotonic(self) -> None:
        confirmed = self.tracker.confirmed
        assert confirmed >= self.last_confirmed, "went backwards"
        self.last_confirmed = confirmed
        prefix_end = 0
        pending = False
        for lsn in self.order:
            if not self._done(lsn):
                assert confirmed <= lsn, "passed a pending transaction"
                pending = True
                break
            prefix_end = self.sealed[lsn]
        # Liveness: as far as the rules allow, and no further.
        candidate = prefix_end if pending else max(prefix_end, self.wal_end)
        self.model_confirmed = max(self.model_confirmed, candidate)
        assert confirmed == self.model_confirmed

    @invariant()
    def per_destination_counts(self) -> None:
        for dest in DESTS:
            pending = sum(self.added[t][dest] - self.finished[t][dest] for t in self.order)
            assert self.tracker.pending_events(dest) == pending
            oldest = next(
                (t for t in self.order if self.added[t][dest] > self.finished[t][dest]), None
            )
            assert self.tracker.oldest_pending_commit_lsn(dest) == oldest


TrackerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_tracker_machine = TrackerMachine.TestCase
