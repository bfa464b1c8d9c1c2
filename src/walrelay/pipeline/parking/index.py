"""Which keys one destination's parked events block, and which event may go next.

Pure bookkeeping: no I/O, no clock, no tasks. :class:`ParkingIndex` holds one
:class:`ParkedRow` per parked event (never its payload) and answers:

* **blocks**: an event must go behind a parked event when it shares one of its
  keys, or when a *barrier* (a parked event without keys: a TRUNCATE) is
  parked -- a barrier holds back everything after it;
* **heads**: per key, only the oldest parked event may be re-delivered; a
  barrier only when nothing parked is older; an event with several keys only
  when it is the oldest of each;
* **due**: heads that are written (``committed``), alive (not ``dead``), not
  already being tried (``busy``), ordered by ``next_at``;
* **the cap**: ``count`` / ``nbytes`` of blocking rows against ``max_events`` /
  ``max_bytes``; reached means paused, until both are below
  :data:`RESUME_FRACTION` of their cap.

A *skipped* row (dead, ``on_dead: skip_dead``) stays known (a replay of it is
not parked again) but blocks nothing and counts toward no cap.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Literal

from walrelay.model import Event, format_event_id

__all__ = ["RESUME_FRACTION", "CapChange", "Ident", "ParkedRow", "ParkingIndex"]

RESUME_FRACTION = 0.9
"""Paused at the cap, parking resumes below this fraction of it."""

Ident = tuple[int, int]  # (commit_lsn, seq): an event id, comparable
CapChange = Literal["paused", "resumed"]


def _unique(keys: tuple[str, ...]) -> tuple[str, ...]:
    if len(keys) < 2 or (len(keys) == 2 and keys[0] != keys[1]):
        return keys
    return tuple(dict.fromkeys(keys))


class ParkedRow:
    """One parked event of one destination as the index knows it (no payload)."""

    __slots__ = (
        "attempts",
        "blocking",
        "busy",
        "committed",
        "dead",
        "first_at",
        "gone",
        "ident",
        "keys",
        "next_at",
        "permanent",
        "revision",
        "size",
        "skipped",
    )

    def __init__(
        self,
        ident: Ident,
        keys: Iterable[str],
        size: int,
        *,
        attempts: int = 0,
        dead: bool = False,
        skipped: bool = False,
        permanent: bool = False,
        next_at: float = 0.0,
        first_at: float = 0.0,
        committed: bool = False,
        revision: int = 0,
    ) -> None:
        self.ident = ident
        self.keys = _unique(tuple(keys))
        self.size = size
        self.attempts = attempts
        self.dead = dead
        self.skipped = skipped
        self.permanent = permanent
        self.next_at = next_at
        self.first_at = first_at
        self.committed = committed  # the row is in the table (not only queued)
        self.revision = revision  # the table's revision column as last read
        self.busy = False  # being delivered, or its outcome being written
        self.blocking = False  # in the key index (parked and not skipped)
        self.gone = False  # discarded from the table while busy

    @property
    def id(self) -> str:
        return format_event_id(*self.ident)

    def __repr__(self) -> str:
        return f"<ParkedRow {self.id} keys={self.keys!r}>"


def _ident(row: ParkedRow) -> Ident:
    return row.ident


class ParkingIndex:
    """One destination's parked events: blocked keys, barriers, due order, the cap."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.rows: dict[Ident, ParkedRow] = {}  # every known row, skipped ones too
        # Blocking rows (parked, not skipped), per key, oldest first.
        self._by_key: dict[str, deque[ParkedRow]] = {}
        self._barriers: list[ParkedRow] = []  # blocking rows without keys, oldest first
        self._before_barrier = 0  # keyed blocking rows older than the first barrier
        self._ready: list[tuple[float, int, int, int, ParkedRow]] = []  # heap by next_at (lazy)
        self._tick = 0
        self.count = 0  # blocking rows, committed or queued: what the cap bounds
        self.nbytes = 0
        self.paused = False

    # -- questions ----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while any row blocks (so :meth:`blocks` may say yes)."""
        return bool(self._by_key) or bool(self._barriers)

    @property
    def blocked_keys(self) -> int:
        return len(self._by_key)

    def blocks(self, event: Event) -> bool:
        """Must ``event`` go behind a parked event (a shared key, or a barrier)?"""
        if self._barriers:
            return True
        by_key = self._by_key
        keys = event.keys
        if not keys:
            return bool(by_key)
        return any(k in by_key for k in keys)

    def blocked(self, events: Sequence[Event]) -> list[Event]:
        """The events of ``events`` that :meth:`blocks` (none at once when idle)."""
        if not self._by_key and not self._barriers:
            return []
        blocks = self.blocks
        return [e for e in events if blocks(e)]

    def get(self, ident: Ident) -> ParkedRow | None:
        return self.rows.get(ident)

    def is_head(self, row: ParkedRow) -> bool:
        """``row`` blocks and nothing parked goes before it."""
        if not row.blocking:
            return False
        barriers = self._barriers
        if not row.keys:
            return bool(barriers) and barriers[0] is row and not self._before_barrier
        if barriers and barriers[0].ident < row.ident:
            return False
        by_key = self._by_key
        return all(by_key[key][0] is row for key in row.keys)

    def eligible(self, row: ParkedRow) -> bool:
        """``row`` may be tried now or when due: written, alive, idle and a head."""
        return row.committed and not row.dead and not row.busy and self.is_head(row)

    def oldest_commit_lsn(self) -> int | None:
        """Commit LSN of the oldest known row (skipped and dead ones too)."""
        return min(self.rows)[0] if self.rows else None

    # -- changes --------------------------------------------------------------------

    def add(self, row: ParkedRow, replaces: ParkedRow | None = None) -> None:
        """Know ``row`` (it blocks unless skipped); ``replaces``: a skipped row of
        the same id that is parked again -- the new one wins."""
        if replaces is not None:
            self.forget(replaces)
        self.rows[row.ident] = row
        if not row.skipped:
            self.block(row)

    def forget(self, row: ParkedRow) -> None:
        """``row`` left the table: it is no longer known, nor blocks anything."""
        if self.rows.get(row.ident) is row:
            del self.rows[row.ident]
        if row.blocking:
            self.unblock(row)

    def block(self, row: ParkedRow) -> None:
        """``row`` blocks its keys (or everything after it: a barrier)."""
        row.blocking = True
        ident = row.ident
        if row.keys:
            by_key = self._by_key
            for key in row.keys:
                queue = by_key.get(key)
                if queue is None:
                    by_key[key] = deque((row,))
                elif queue[-1].ident < ident:
                    queue.append(row)
                else:  # out of order (re-read from the table): rare
                    items = list(queue)
                    bisect.insort(items, row, key=_ident)
                    by_key[key] = deque(items)
            barriers = self._barriers
            if barriers and ident < barriers[0].ident:
                self._before_barrier += 1
        else:
            bisect.insort(self._barriers, row, key=_ident)
            if self._barriers[0] is row:
                self._count_before_barrier()
        self.count += 1
        self.nbytes += row.size

    def unblock(self, row: ParkedRow) -> None:
        """``row`` no longer blocks (delivered, discarded or skipped); the rows it
        held back are considered for delivery."""
        row.blocking = False
        self.count -= 1
        self.nbytes -= row.size
        candidates: list[ParkedRow] = []
        by_key = self._by_key
        barriers = self._barriers
        if row.keys:
            if barriers and row.ident < barriers[0].ident:
                self._before_barrier -= 1
                if not self._before_barrier:
                    candidates.append(barriers[0])
            for key in row.keys:
                queue = by_key.get(key)
                if queue is None:
                    continue
                if queue[0] is row:
                    queue.popleft()
                else:
                    with contextlib.suppress(ValueError):
                        queue.remove(row)
                if queue:
                    candidates.append(queue[0])
                else:
                    del by_key[key]
        else:
            was_first = bool(barriers) and barriers[0] is row
            with contextlib.suppress(ValueError):
                barriers.remove(row)
            if was_first:
                self._count_before_barrier()
                candidates.extend(queue[0] for queue in by_key.values())
                if barriers:
                    candidates.append(barriers[0])
        for candidate in candidates:
            self.consider(candidate)

    def _count_before_barrier(self) -> None:
        """Recount after the first barrier changed (rare: O(parked events))."""
        barriers = self._barriers
        if not barriers:
            self._before_barrier = 0
            return
        first = barriers[0].ident
        self._before_barrier = sum(
            1 for r in self.rows.values() if r.blocking and r.keys and r.ident < first
        )

    # -- what is due ------------------------------------------------------------------

    def consider(self, row: ParkedRow) -> bool:
        """Queue ``row`` by its ``next_at`` if it is :meth:`eligible`; True if so."""
        if self.eligible(row):
            self._schedule(row)
            return True
        return False

    def _schedule(self, row: ParkedRow) -> None:
        self._tick += 1
        heapq.heappush(self._ready, (row.next_at, row.ident[0], row.ident[1], self._tick, row))

    def take_due(self, now: float, limit: int) -> list[ParkedRow]:
        """Up to ``limit`` eligible rows whose ``next_at`` is not after ``now``,
        soonest first; they leave the queue (:meth:`consider` puts one back)."""
        ready = self._ready
        due: list[ParkedRow] = []
        while ready and len(due) < limit:
            next_at, _, _, _, row = ready[0]
            if next_at != row.next_at or not self.eligible(row):
                heapq.heappop(ready)  # stale entry
                continue
            if next_at > now:
                break
            heapq.heappop(ready)
            if all(r is not row for r in due):  # a row may be queued twice
                due.append(row)
        return due

    @property
    def queued(self) -> bool:
        """True while any row waits in the due queue (some may turn out stale)."""
        return bool(self._ready)

    def next_due_at(self) -> float | None:
        """When the soonest queued row is due (it may turn out stale), or None."""
        return self._ready[0][0] if self._ready else None

    # -- the cap ------------------------------------------------------------------------

    def check_cap(self) -> CapChange | None:
        """``"paused"`` when the cap was just reached, ``"resumed"`` when the
        backlog just fell below :data:`RESUME_FRACTION` of it, else None."""
        if not self.paused:
            if self.count >= self.max_events or self.nbytes >= self.max_bytes:
                self.paused = True
                return "paused"
        elif (
            self.count < self.max_events * RESUME_FRACTION
            and self.nbytes < self.max_bytes * RESUME_FRACTION
        ):
            self.paused = False
            return "resumed"
        return None
