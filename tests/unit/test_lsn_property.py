"""Property test of the LSN tracker over deliveries, failures and parkings.

Each event is modelled on its own, per destination: it is *pending* when
routed, may *fail* any number of times (nothing changes for the tracker: the
scheduler keeps it and retries), and ends *delivered* or *parked* (durably in
the failed-event store) -- both finish it, in batches that mix transactions,
through ``finish_events`` as the scheduler calls it. Meanwhile the stream
side begins, fills and seals transactions and keepalives arrive.

Properties, checked after every step:

- the confirmed LSN never goes backwards;
- it never passes the commit LSN of a transaction that is not sealed or
  still has an event neither delivered nor parked, for any destination;
- and it is not lazy: once every transaction up to some point is done, it
  reaches at least that transaction's end LSN.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.factories import make_event
from walrelay.model import Event
from walrelay.pipeline.lsn import LsnTracker

DESTS = ("webhook", "kafka")
PENDING, FAILED, DELIVERED, PARKED = "pending", "failed", "delivered", "parked"


class Txn:
    def __init__(self, commit_lsn: int) -> None:
        self.commit_lsn = commit_lsn
        self.end_lsn: int | None = None
        self.events: list[tuple[str, Event]] = []  # (destination, event)


class DeliveryMachine(RuleBasedStateMachine):
    @initialize(start=st.integers(0, 1000))
    def setup(self, start: int) -> None:
        self.tracker = LsnTracker(start=start)
        self.start = start
        self.next_lsn = start + 1
        self.txns: list[Txn] = []
        self.open: Txn | None = None
        self.state: dict[tuple[str, str], str] = {}  # (dest, event id) -> state
        self.last_confirmed = start
        self.wal_end = start

    # -- the stream side ------------------------------------------------------

    @precondition(lambda self: self.open is None)
    @rule(gap=st.integers(0, 40))
    def begin(self, gap: int) -> None:
        txn = Txn(self.next_lsn + gap)
        self.tracker.begin(txn.commit_lsn)
        self.next_lsn = txn.commit_lsn + 50
        self.txns.append(txn)
        self.open = txn

    @precondition(lambda self: self.open is not None)
    @rule(dests=st.lists(st.sampled_from(DESTS), min_size=1, max_size=3))
    def route(self, dests: list[str]) -> None:
        txn = self.open
        assert txn is not None
        seq = len({e.seq for _, e in txn.events})
        event = make_event(txn.commit_lsn, seq)
        for dest in dict.fromkeys(dests):  # each destination once
            self.tracker.add(txn.commit_lsn, 1, destination=dest)
            txn.events.append((dest, event))
            self.state[(dest, event.id)] = PENDING

    @precondition(lambda self: self.open is not None)
    @rule(size=st.integers(1, 49))
    def seal(self, size: int) -> None:
        txn = self.open
        assert txn is not None
        txn.end_lsn = txn.commit_lsn + size
        self.tracker.seal(txn.commit_lsn, txn.end_lsn)
        self.open = None

    @rule(back=st.integers(0, 60))
    def keepalive(self, back: int) -> None:
        # Everything before wal_end was sent: not beyond the next commit.
        wal_end = max(0, self.next_lsn - back) if self.open is None else self.open.commit_lsn
        self.tracker.keepalive(wal_end)
        if self.open is None:
            self.wal_end = max(self.wal_end, wal_end)

    # -- the delivery side ----------------------------------------------------

    def _unfinished(self, dest: str) -> list[Event]:
        return [
            e
            for t in self.txns
            for d, e in t.events
            if d == dest and self.state[(d, e.id)] in (PENDING, FAILED)
        ]

    @rule(dest=st.sampled_from(DESTS), data=st.data())
    def fail(self, dest: str, data: st.DataObject) -> None:
        events = self._unfinished(dest)
        if events:
            for e in data.draw(st.lists(st.sampled_from(events), max_size=5, unique_by=id)):
                self.state[(dest, e.id)] = FAILED  # retried later: nothing finishes

    @rule(dest=st.sampled_from(DESTS), outcome=st.sampled_from((DELIVERED, PARKED)), data=st.data())
    def finish_batch(self, dest: str, outcome: str, data: st.DataObject) -> None:
        events = self._unfinished(dest)
        if not events:
            return
        batch = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=8, unique_by=id))
        batch.sort(key=lambda e: (e.commit_lsn, e.seq))  # a batch is cut in id order
        for e in batch:
            self.state[(dest, e.id)] = outcome
        self.tracker.finish_events(batch, dest)

    # -- the properties -------------------------------------------------------

    def _done(self, txn: Txn) -> bool:
        return txn.end_lsn is not None and all(
            self.state[(d, e.id)] in (DELIVERED, PARKED) for d, e in txn.events
        )

    @invariant()
    def never_backwards(self) -> None:
        confirmed = self.tracker.confirmed
        assert confirmed >= self.last_confirmed, "the confirmed LSN went backwards"
        self.last_confirmed = confirmed

    @invariant()
    def never_past_an_unfinished_event(self) -> None:
        confirmed = self.tracker.confirmed
        for txn in self.txns:
            if not self._done(txn):
                assert confirmed <= txn.commit_lsn, (
                    f"confirmed {confirmed} passed transaction {txn.commit_lsn}, which has an"
                    " event neither delivered nor parked"
                )

    @invariant()
    def not_lazy(self) -> None:
        reach = self.start
        for txn in self.txns:
            if not self._done(txn):
                return
            assert txn.end_lsn is not None
            reach = max(reach, txn.end_lsn)
        if self.open is None:
            reach = max(reach, self.wal_end)
        assert self.tracker.confirmed >= reach


DeliveryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=80, deadline=None
)
test_delivery_interleavings = DeliveryMachine.TestCase
