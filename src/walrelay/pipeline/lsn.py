"""Which LSN walrelay may confirm to PostgreSQL (the slot's ``confirmed_flush_lsn``).

:class:`LsnTracker` is pure bookkeeping: no I/O, no clocks. The engine tells it
what it received (``begin``/``add``/``seal``, in stream order) and what the
destinations finished (``finish``: delivered, or durably parked), and reads
:attr:`LsnTracker.confirmed`.

The rule (ARCHITECTURE section 2, "Safe LSN"): the confirmed LSN only moves
past a transaction once every event of it, for every destination, is finished.
It is the ``end_lsn`` of the newest transaction such that it and every earlier
transaction are finished; when nothing at all is pending it may also move up to
the last keepalive's ``wal_end`` (the server has sent everything before that,
so a quiet publication in a busy database still advances the slot).

Every operation is O(1) amortised: a dict from commit LSN to a small record,
and a deque of pending records in commit order whose head is retired as soon
as it is finished.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from walrelay.model import Event, Lsn, format_lsn

__all__ = ["LsnTracker"]


class _Txn:
    __slots__ = ("commit_lsn", "end_lsn", "outstanding", "per_dest")

    def __init__(self, commit_lsn: Lsn) -> None:
        self.commit_lsn = commit_lsn
        self.end_lsn: Lsn | None = None  # None until sealed
        self.outstanding = 0  # events added and not yet finished, all destinations
        self.per_dest: dict[str, int] | None = None  # the same, per destination


def _commit_lsn(txn: _Txn) -> Lsn:
    return txn.commit_lsn


class LsnTracker:
    """Tracks pending transactions and derives the LSN that is safe to confirm.

    ``start`` is the LSN streaming started from (the slot's confirmed LSN);
    :attr:`confirmed` never goes below it.

    Misuse (finishing more events than were added, adding to a sealed or
    unknown transaction, a ``begin`` that goes backwards) raises ValueError:
    it is a bug in the caller, not a condition to handle. After a reconnect
    the server replays from the confirmed LSN; transactions at or below
    :attr:`last_begun` are already in the pipeline and must be skipped (or
    the pipeline rebuilt with a fresh tracker).

    Per-destination counts (``destination=`` on :meth:`add`/:meth:`finish`)
    feed :meth:`pending_events` and :meth:`oldest_pending_commit_lsn`; pass
    the destination consistently for an event on both calls.
    """

    __slots__ = (
        "_confirmed",
        "_dest_order",
        "_dest_pending",
        "_keepalive",
        "_last_begin",
        "_order",
        "_pending_total",
        "_txns",
    )

    def __init__(self, start: Lsn = 0) -> None:
        self._txns: dict[Lsn, _Txn] = {}
        self._order: deque[_Txn] = deque()  # begun and not yet retired, commit order
        self._confirmed: Lsn = start
        self._keepalive: Lsn = start  # highest keepalive wal_end seen
        self._last_begin: Lsn | None = None
        self._pending_total = 0
        self._dest_pending: dict[str, int] = {}
        # Per destination, the transactions that got events for it, in commit
        # order; finished ones are dropped from the head lazily.
        self._dest_order: dict[str, deque[_Txn]] = {}

    # -- the stream side ------------------------------------------------------

    def begin(self, commit_lsn: Lsn) -> None:
        """A transaction with this commit LSN was received (strictly increasing)."""
        if self._last_begin is not None and commit_lsn <= self._last_begin:
            raise ValueError(
                f"begin({format_lsn(commit_lsn)}) after begin({format_lsn(self._last_begin)}):"
                " transactions must arrive in increasing commit LSN order"
            )
        if commit_lsn < self._confirmed:
            raise ValueError(
                f"begin({format_lsn(commit_lsn)}) below the confirmed LSN"
                f" {format_lsn(self._confirmed)}: the server cannot send that"
            )
        txn = _Txn(commit_lsn)
        self._txns[commit_lsn] = txn
        self._order.append(txn)
        self._last_begin = commit_lsn

    def add(self, commit_lsn: Lsn, count: int = 1, destination: str | None = None) -> None:
        """``count`` events of the transaction were routed (to ``destination``)."""
        if count < 0:
            raise ValueError(f"add: negative count {count}")
        txn = self._txns.get(commit_lsn)
        if txn is None:
            raise ValueError(f"add: transaction {format_lsn(commit_lsn)} was not begun or is done")
        if txn.end_lsn is not None:
            raise ValueError(f"add: transaction {format_lsn(commit_lsn)} is already sealed")
        if not count:
            return
        txn.outstanding += count
        self._pending_total += count
        if destination is not None:
            per_dest = txn.per_dest
            if per_dest is None:
                per_dest = txn.per_dest = {}
            have = per_dest.get(destination)
            if have is None:
                order = self._dest_order.get(destination)
                if order is None:
                    order = self._dest_order[destination] = deque()
                if order and order[-1].commit_lsn > commit_lsn:
                    # Several transactions open at once: keep commit order (rare).
                    at = bisect.bisect(order, commit_lsn, key=_commit_lsn)
                    order.insert(at, txn)
                else:
                    order.append(txn)
                have = 0
            per_dest[destination] = have + count
            self._dest_pending[destination] = self._dest_pending.get(destination, 0) + count

    def seal(self, commit_lsn: Lsn, end_lsn: Lsn) -> None:
        """The commit was seen: no more events will be added to the transaction."""
        txn = self._txns.get(commit_lsn)
        if txn is None:
            raise ValueError(f"seal: transaction {format_lsn(commit_lsn)} was not begun")
        if txn.end_lsn is not None:
            raise ValueError(f"seal: transaction {format_lsn(commit_lsn)} is already sealed")
        if end_lsn < commit_lsn:
            raise ValueError(
                f"seal: end LSN {format_lsn(end_lsn)} is before commit LSN {format_lsn(commit_lsn)}"
            )
        txn.end_lsn = end_lsn
        if txn.outstanding == 0 and self._order[0] is txn:
            self._advance()
        if txn.per_dest:
            for destination, left in txn.per_dest.items():
                if not left:
                    self._prune(destination)

    def keepalive(self, wal_end: Lsn) -> None:
        """The server said it has sent everything before ``wal_end``."""
        if wal_end > self._keepalive:
            self._keepalive = wal_end
        if not self._order and wal_end > self._confirmed:
            self._confirmed = wal_end

    # -- the delivery side ----------------------------------------------------

    def finish(self, commit_lsn: Lsn, count: int = 1, destination: str | None = None) -> None:
        """``count`` events of the transaction were delivered or durably parked."""
        txn = self._txns.get(commit_lsn)
        if txn is None:
            raise ValueError(
                f"finish: transaction {format_lsn(commit_lsn)} has no pending events"
                " (finished more than added, or never begun)"
            )
        if count < 0 or count > txn.outstanding:
            raise ValueError(
                f"finish: {count} events of {format_lsn(commit_lsn)} but only"
                f" {txn.outstanding} are pending"
            )
        if destination is not None and count:
            per_dest = txn.per_dest
            have = per_dest.get(destination, 0) if per_dest is not None else 0
            if per_dest is None or count > have:
                raise ValueError(
                    f"finish: {count} events of {format_lsn(commit_lsn)} for {destination!r}"
                    f" but only {have} are pending there"
                )
            left = have - count
            per_dest[destination] = left
            self._dest_pending[destination] -= count
            if not left:
                self._prune(destination)
        txn.outstanding -= count
        self._pending_total -= count
        if txn.outstanding == 0 and txn.end_lsn is not None and self._order[0] is txn:
            self._advance()

    def finish_events(self, events: Iterable[Event], destination: str | None = None) -> None:
        """:meth:`finish` for a delivered batch: one call per run of equal commit LSNs."""
        lsn: Lsn = -1
        run = 0
        for event in events:
            commit_lsn = event.commit_lsn
            if commit_lsn != lsn:
                if run:
                    self.finish(lsn, run, destination)
                lsn = commit_lsn
                run = 0
            run += 1
        if run:
            self.finish(lsn, run, destination)

    # -- reading --------------------------------------------------------------

    @property
    def confirmed(self) -> Lsn:
        """The LSN that is safe to report as flushed. Never goes backwards."""
        return self._confirmed

    @property
    def last_begun(self) -> Lsn | None:
        """Commit LSN of the last :meth:`begin`, or None."""
        return self._last_begin

    @property
    def pending_transactions(self) -> int:
        """Transactions begun and not yet finished."""
        return len(self._order)

    def pending_events(self, destination: str | None = None) -> int:
        """Events added and not yet finished, for one destination or all of them."""
        if destination is None:
            return self._pending_total
        return self._dest_pending.get(destination, 0)

    def oldest_pending_commit_lsn(self, destination: str | None = None) -> Lsn | None:
        """Commit LSN of the oldest transaction still pending (with events pending
        for ``destination`` when given), or None."""
        if destination is None:
            return self._order[0].commit_lsn if self._order else None
        self._prune(destination)
        order = self._dest_order.get(destination)
        if not order:
            return None
        for txn in order:  # normally the head; unsealed empty ones are skipped
            per_dest = txn.per_dest
            if per_dest is not None and per_dest.get(destination):
                return txn.commit_lsn
        return None

    # -- internals ------------------------------------------------------------

    def _advance(self) -> None:
        """Retire finished transactions from the head and move the confirmed LSN."""
        order = self._order
        txns = self._txns
        end: Lsn = self._confirmed
        while order:
            txn = order[0]
            if txn.outstanding or txn.end_lsn is None:
                break
            order.popleft()
            del txns[txn.commit_lsn]
            end = txn.end_lsn
        if order:
            # Never pass a pending transaction, even if an end LSN was bogus.
            end = min(end, order[0].commit_lsn)
        elif self._keepalive > end:
            end = self._keepalive
        if end > self._confirmed:
            self._confirmed = end

    def _prune(self, destination: str) -> None:
        """Drop sealed transactions with nothing pending for ``destination`` from
        the head of its order (amortised O(1); keeps the deque bounded)."""
        order = self._dest_order.get(destination)
        while order:
            txn = order[0]
            per_dest = txn.per_dest
            if txn.end_lsn is None or (per_dest is not None and per_dest.get(destination)):
                break
            order.popleft()
