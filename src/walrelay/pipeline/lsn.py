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
as it is finished. Per destination, a dict from commit LSN to the events
pending there, in commit order, with an entry only while it is non-zero.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import NoReturn

from walrelay.model import Event, Lsn, format_lsn

__all__ = ["LsnTracker"]

# A transaction is a list [commit_lsn, end_lsn, outstanding]: end_lsn is -1
# until sealed, outstanding counts the events added and not yet finished, all
# destinations. (A list is several times cheaper to make than an object, and
# one is made per transaction.)
_Txn = list[int]
_COMMIT, _END, _OUTSTANDING = 0, 1, 2
_UNSEALED = -1


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
        "_waiters",
    )

    def __init__(self, start: Lsn = 0) -> None:
        self._txns: dict[Lsn, _Txn] = {}
        # Begun and not yet retired, commit order.
        self._order: deque[_Txn] = deque()
        self._confirmed: Lsn = start
        self._keepalive: Lsn = start  # highest keepalive wal_end seen
        self._last_begin: Lsn = -1  # -1: none yet
        self._pending_total = 0
        self._dest_pending: dict[str, int] = {}
        # Per destination: commit LSN -> events pending there, in commit
        # order; a transaction is dropped as soon as its count is zero.
        self._dest_order: dict[str, dict[Lsn, int]] = {}
        # wait_confirmed(): (lsn, tie-breaker, future), lowest LSN first.
        self._waiters: list[tuple[Lsn, int, asyncio.Future[None]]] = []

    # -- the stream side ------------------------------------------------------

    def begin(self, commit_lsn: Lsn) -> None:
        """A transaction with this commit LSN was received (strictly increasing)."""
        if commit_lsn <= self._last_begin or commit_lsn < self._confirmed:
            self._bad_begin(commit_lsn)
        txn = [commit_lsn, _UNSEALED, 0]
        self._txns[commit_lsn] = txn
        self._order.append(txn)
        self._last_begin = commit_lsn

    def _bad_begin(self, commit_lsn: Lsn) -> NoReturn:
        if self._last_begin >= 0 and commit_lsn <= self._last_begin:
            raise ValueError(
                f"begin({format_lsn(commit_lsn)}) after begin({format_lsn(self._last_begin)}):"
                " transactions must arrive in increasing commit LSN order"
            )
        raise ValueError(
            f"begin({format_lsn(commit_lsn)}) below the confirmed LSN"
            f" {format_lsn(self._confirmed)}: the server cannot send that"
        )

    def add(self, commit_lsn: Lsn, count: int = 1, destination: str | None = None) -> None:
        """``count`` events of the transaction were routed (to ``destination``)."""
        if destination is not None:
            self.add_counts(commit_lsn, {destination: count})
            return
        txn = self._txns.get(commit_lsn)
        if txn is None or txn[_END] != _UNSEALED or count < 0:
            self._bad_add(commit_lsn, count)
        txn[_OUTSTANDING] += count
        self._pending_total += count

    def add_counts(self, commit_lsn: Lsn, counts: Mapping[str, int]) -> None:
        """:meth:`add` for several destinations at once: ``{destination: count}``."""
        txn = self._txns.get(commit_lsn)
        if txn is None or txn[_END] != _UNSEALED:
            self._bad_add(commit_lsn, 0)
        dest_order = self._dest_order
        dest_pending = self._dest_pending
        for destination, count in counts.items():
            if count <= 0:
                if count:
                    self._bad_add(commit_lsn, count)
                continue
            txn[_OUTSTANDING] += count
            self._pending_total += count
            dest_pending[destination] = dest_pending.get(destination, 0) + count
            pending = dest_order.get(destination)
            if pending is None:
                dest_order[destination] = {commit_lsn: count}
                continue
            have = pending.get(commit_lsn)
            if have is not None:
                pending[commit_lsn] = have + count
            elif (
                commit_lsn == self._last_begin
                or not pending
                or next(reversed(pending)) < commit_lsn
            ):
                pending[commit_lsn] = count
            else:
                # Several transactions open at once (rare): keep commit order.
                ordered = sorted([*pending.items(), (commit_lsn, count)])
                pending.clear()
                pending.update(ordered)

    def _bad_add(self, commit_lsn: Lsn, count: int) -> NoReturn:
        txn = self._txns.get(commit_lsn)
        if txn is None:
            raise ValueError(f"add: transaction {format_lsn(commit_lsn)} was not begun or is done")
        if txn[_END] != _UNSEALED:
            raise ValueError(f"add: transaction {format_lsn(commit_lsn)} is already sealed")
        raise ValueError(f"add: negative count {count}")

    def seal(self, commit_lsn: Lsn, end_lsn: Lsn) -> None:
        """The commit was seen: no more events will be added to the transaction."""
        txn = self._txns.get(commit_lsn)
        if txn is None or txn[_END] != _UNSEALED or end_lsn < commit_lsn:
            self._bad_seal(commit_lsn, end_lsn)
        txn[_END] = end_lsn
        if not txn[_OUTSTANDING] and self._order[0] is txn:
            self._advance()

    def _bad_seal(self, commit_lsn: Lsn, end_lsn: Lsn) -> NoReturn:
        txn = self._txns.get(commit_lsn)
        if txn is None:
            raise ValueError(f"seal: transaction {format_lsn(commit_lsn)} was not begun")
        if txn[_END] != _UNSEALED:
            raise ValueError(f"seal: transaction {format_lsn(commit_lsn)} is already sealed")
        raise ValueError(
            f"seal: end LSN {format_lsn(end_lsn)} is before commit LSN {format_lsn(commit_lsn)}"
        )

    def keepalive(self, wal_end: Lsn) -> None:
        """The server said it has sent everything before ``wal_end``."""
        if wal_end > self._keepalive:
            self._keepalive = wal_end
        if not self._order and wal_end > self._confirmed:
            self._confirmed = wal_end
            if self._waiters:
                self._wake()

    # -- the delivery side ----------------------------------------------------

    def finish(self, commit_lsn: Lsn, count: int = 1, destination: str | None = None) -> None:
        """``count`` events of the transaction were delivered or durably parked."""
        self._finish_runs(((commit_lsn, count),), destination)

    def finish_events(self, events: Iterable[Event], destination: str | None = None) -> None:
        """:meth:`finish` for a delivered batch: one step per run of equal commit LSNs."""
        runs: list[tuple[Lsn, int]] = []
        lsn: Lsn = -1
        run = 0
        for event in events:
            commit_lsn = event.commit_lsn
            if commit_lsn != lsn:
                if run:
                    runs.append((lsn, run))
                lsn = commit_lsn
                run = 0
            run += 1
        if run:
            runs.append((lsn, run))
            self._finish_runs(runs, destination)

    def _finish_runs(self, runs: Iterable[tuple[Lsn, int]], destination: str | None) -> None:
        """Finish ``(commit_lsn, count)`` runs, then retire what they completed."""
        txns = self._txns
        pending = None
        if destination is not None:
            pending = self._dest_order.get(destination)
            if pending is None:
                pending = self._dest_order[destination] = {}
        done = 0
        try:
            for commit_lsn, count in runs:
                txn = txns.get(commit_lsn)
                if txn is None:
                    raise ValueError(
                        f"finish: transaction {format_lsn(commit_lsn)} has no pending events"
                        " (finished more than added, or never begun)"
                    )
                outstanding: int = txn[_OUTSTANDING]
                if count < 0 or count > outstanding:
                    raise ValueError(
                        f"finish: {count} events of {format_lsn(commit_lsn)} but only"
                        f" {outstanding} are pending"
                    )
                if pending is not None and count:
                    have = pending.get(commit_lsn, 0)
                    if count == have:
                        del pending[commit_lsn]
                    elif count < have:
                        pending[commit_lsn] = have - count
                    else:
                        raise ValueError(
                            f"finish: {count} events of {format_lsn(commit_lsn)} for"
                            f" {destination!r} but only {have} are pending there"
                        )
                txn[_OUTSTANDING] = outstanding - count
                done += count
        finally:
            if done:
                self._pending_total -= done
                if destination is not None:
                    self._dest_pending[destination] -= done
                head = self._order[0]
                if not head[_OUTSTANDING] and head[_END] != _UNSEALED:
                    self._advance()

    # -- reading --------------------------------------------------------------

    @property
    def confirmed(self) -> Lsn:
        """The LSN that is safe to report as flushed. Never goes backwards."""
        return self._confirmed

    async def wait_confirmed(self, lsn: Lsn) -> None:
        """Return once :attr:`confirmed` is at or past ``lsn`` (no polling)."""
        if self._confirmed >= lsn:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (lsn, id(future), future))
        await future

    @property
    def last_begun(self) -> Lsn | None:
        """Commit LSN of the last :meth:`begin`, or None."""
        return None if self._last_begin < 0 else self._last_begin

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
            return self._order[0][_COMMIT] if self._order else None
        return next(iter(self._dest_order.get(destination, ())), None)

    # -- internals ------------------------------------------------------------

    def _advance(self) -> None:
        """Retire finished transactions from the head and move the confirmed LSN."""
        order = self._order
        txns = self._txns
        end: Lsn = self._confirmed
        while order:
            txn = order[0]
            if txn[_OUTSTANDING] or txn[_END] == _UNSEALED:
                break
            order.popleft()
            del txns[txn[_COMMIT]]
            end = txn[_END]
        if order:
            # Never pass a pending transaction, even if an end LSN was bogus.
            end = min(end, order[0][_COMMIT])
        elif self._keepalive > end:
            end = self._keepalive
        if end > self._confirmed:
            self._confirmed = end
            if self._waiters:
                self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        confirmed = self._confirmed
        while waiters and waiters[0][0] <= confirmed:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)
