"""One destination's parking: what the scheduler asks, and what gets written.

:class:`DestinationParking` is what :class:`walrelay.pipeline.scheduler.Destination`
talks to (its ``Parking`` protocol). It keeps the
:class:`~walrelay.pipeline.parking.index.ParkingIndex` in step with the
table: rows enter the index when they are queued for writing (so a key
blocks at once) and leave it once their removal is durable.

How an event gets parked
    * **after failing**: the scheduler retried a batch in memory
      ``parking.park_after`` times (a permanent rejection: at once) and asked
      :meth:`DestinationParking.on_failure`; the rows are *committed* before
      the answer is ``"parked"``, and only then does the LSN tracker count the
      events as finished -- the slot moves on during a long outage;
    * **diverted**: while a key has parked events, every later event sharing
      one of its keys is parked behind them (:meth:`~DestinationParking.blocks`,
      :meth:`~DestinationParking.divert`), finished once committed. Other keys
      keep flowing. A TRUNCATE (no key: a barrier) taken while anything is
      parked is parked too, and then everything after it goes behind it.

How it leaves
    The :mod:`retry loop <walrelay.pipeline.parking.retry_loop>` delivers the
    heads when due. Success deletes the row (committed before the key moves
    on); the next event of the key was parked with ``next_attempt_at`` = its
    parking time, so it is due at once. Failure counts the attempt and
    persists the next time: ``parking.backoff`` (exponential, full jitter; a
    ``Retry-After`` is honoured up to ``backoff.max``). A restart loads the
    rows and their times, so the schedule is neither reset nor skipped.

Dead events
    Past ``parking.max_attempts`` (default: never), or
    ``parking.permanent_attempts`` for permanent rejections (HTTP
    400/404/413/422...), an event is *dead*: it stays in the table and its key
    stays blocked (``on_dead: block``, logged at ERROR) until ``walrelay
    parking retry`` or ``discard``; with ``on_dead: skip_dead`` it is marked
    skipped, logged and counted, and its key moves on.

The cap
    ``parking.max_events`` / ``parking.max_bytes``. Reaching one logs
    :data:`PAUSED_MESSAGE` at CRITICAL (a page) and sets :attr:`paused`: the
    destination's ``put`` waits, so the engine stops reading the stream
    (status updates go on), and no more events are parked (a failing batch
    keeps retrying in memory, diverted events stay in the buffer). Below 90%
    of the cap, replication resumes. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from walrelay import failpoints
from walrelay.config import ParkingConfig
from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.parking.host import ParkingHost
from walrelay.pipeline.parking.index import RESUME_FRACTION, ParkedRow, ParkingIndex
from walrelay.pipeline.parking.retry_loop import ParkedRetryLoop
from walrelay.pipeline.parking.writes import (
    DeleteRow,
    ParkingTable,
    ParkRows,
    ReadRows,
    UpdateRow,
)
from walrelay.pipeline.scheduler import FailureDecision
from walrelay.state import parking as T

__all__ = ["PAUSED_MESSAGE", "RESUMED_MESSAGE", "DestinationParking"]

log = logging.getLogger("walrelay.parking")

PAUSED_MESSAGE = "replication paused: parked-event cap reached"
"""Stable prefix of the CRITICAL log line when a destination's cap is reached."""
RESUMED_MESSAGE = "replication resumed: parked-event backlog below its cap"


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def _route_param(event: Event) -> Jsonb | None:
    """The ``route`` column of a parked event: routed events keep their route."""
    route = T.route_to_json(event.route)
    if event.rendering is not None:  # an output format's key and headers
        route = dict(route or {}, rendering=T.rendering_to_json(event.rendering))
    return None if route is None else Jsonb(route)


class DestinationParking:
    """One destination's parked events: the scheduler's side, writes, the retry loop.

    Implements :class:`walrelay.pipeline.scheduler.Parking`. Monitoring reads
    :meth:`stats` (parked count, dead count, oldest parked age, ...) and
    :attr:`paused`.
    """

    def __init__(
        self,
        table: ParkingTable,
        name: str,
        config: ParkingConfig,
        host: ParkingHost,
        *,
        max_in_flight: int = 32,
    ) -> None:
        self.name = name
        self.config = config
        self.backoff = Backoff(
            initial=config.backoff.initial,
            multiplier=config.backoff.multiplier,
            maximum=config.backoff.max,
        )
        self.index = ParkingIndex(config.max_events, config.max_bytes)
        self._table = table
        self._host = host
        self._loop = ParkedRetryLoop(
            name,
            self.index,
            table,
            host,
            self,
            max_in_flight=max_in_flight,
            unreadable_delay=min(5.0, self.backoff.maximum),
        )
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        # Counters since start.
        self.parked_total = 0  # events written to the table
        self.delivered_total = 0  # parked events delivered by the retry loop
        self.retry_failures_total = 0
        self.dead_total = 0
        self.skipped_total = 0
        self.discarded_total = 0
        self.pauses_total = 0

    def __repr__(self) -> str:
        return (
            f"<DestinationParking {self.name!r} parked={self.index.count}"
            f" paused={self.index.paused}>"
        )

    # -- what the scheduler asks ----------------------------------------------------

    @property
    def paused(self) -> bool:
        """At the cap: the destination takes no more events (replication paused)."""
        return self.index.paused

    async def wait_unpaused(self) -> None:
        await self._unpaused.wait()

    def blocks(self, batch: Sequence[Event]) -> list[Event]:
        """The events of ``batch`` that must go behind a parked event."""
        return self.index.blocked(batch)

    @property
    def idle(self) -> bool:
        """Nothing parked blocks a key and no parked row waits for a retry."""
        index = self.index
        return not index.active and not index.queued

    def wake(self) -> None:
        """A delivery slot may be free."""
        self._loop.wake()

    def divert(self, events: list[Event]) -> bool:
        """Park ``events`` behind their keys; they are finished through
        :meth:`ParkingHost.finish_diverted` once written. False when paused."""
        if self.index.paused:
            return False
        now = time.time()
        rows: list[ParkedRow] = []
        params: list[tuple[Any, ...]] = []
        for event in events:
            ident = (event.commit_lsn, event.seq)
            known = self.index.get(ident)
            if known is not None and not known.skipped:
                continue  # a replay of an event parked before a restart
            row = ParkedRow(ident, event.keys, len(event.body), next_at=now, first_at=now)
            self.index.add(row, known)
            rows.append(row)
            params.append(self._params(event, row, None, now))
        self._table.enqueue(ParkRows(self.name, self._parked, rows, params, list(events)))
        self._check_cap()
        return True

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        """``"parked"`` once ``batch`` is durably parked, or ``"retry"`` (in memory)."""
        cfg = self.config
        permanent = isinstance(error, SinkError) and error.permanent
        if not permanent and attempts < cfg.park_after:
            return "retry"
        if self.index.paused:
            return "retry"  # at the cap: keep it in memory (holds its key)
        now = time.time()
        retry_after = error.retry_after if isinstance(error, SinkError) else None
        dead = self._is_dead(attempts, permanent)
        skipped = dead and cfg.on_dead == "skip_dead"
        text = _error_text(error)
        rows: list[ParkedRow] = []
        params: list[tuple[Any, ...]] = []
        for event in batch:
            ident = (event.commit_lsn, event.seq)
            known = self.index.get(ident)
            if known is not None and not known.skipped:
                continue  # cannot happen (its key would be blocked); already parked
            row = ParkedRow(
                ident,
                event.keys,
                len(event.body),
                attempts=attempts,
                dead=dead,
                skipped=skipped,
                permanent=permanent,
                next_at=now + self.backoff.delay(attempts, retry_after),
                first_at=now,
            )
            self.index.add(row, known)
            rows.append(row)
            params.append(self._params(event, row, text, now))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._table.enqueue(ParkRows(self.name, self._parked, rows, params, [], future))
        self._check_cap()
        await future
        log.warning(
            "destination %s: parked %d event(s) from %s after %d failed attempt(s) (%s);"
            " later events of the same key(s) are parked behind them",
            self.name,
            len(batch),
            batch[0].id if batch else "-",
            attempts,
            text,
        )
        if dead:
            self._log_dead(rows, text)
        return "parked"

    # -- the retry loop's outcomes (AttemptOutcomes) -----------------------------------

    def delivered(self, row: ParkedRow) -> None:
        self._table.enqueue(DeleteRow(self.name, self._deleted, row))

    def failed(self, row: ParkedRow, error: BaseException) -> None:
        now = time.time()
        attempts = row.attempts + 1
        permanent = isinstance(error, SinkError) and error.permanent
        retry_after = error.retry_after if isinstance(error, SinkError) else None
        dead = self._is_dead(attempts, permanent)
        skipped = dead and self.config.on_dead == "skip_dead"
        next_at = now + self.backoff.delay(attempts, retry_after)
        text = _error_text(error)
        self.retry_failures_total += 1
        if not dead:
            log.info(
                "destination %s: parked event %s failed again (attempt %d): %s; next attempt"
                " in %.1fs",
                self.name,
                row.id,
                attempts,
                text,
                next_at - now,
            )
        self._table.enqueue(
            UpdateRow(
                self.name,
                self._updated,
                row,
                attempts=attempts,
                error=text,
                permanent=permanent,
                dead=dead,
                skipped=skipped,
                next_at=next_at,
                attempted_at=now,
            )
        )

    def missing(self, row: ParkedRow) -> None:
        self._loop.release_slot(row)
        self.discarded_total += 1
        self._forget(row)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        self._unpaused.set()  # let a waiting put see the stop

    # -- index upkeep -------------------------------------------------------------------

    def _is_dead(self, attempts: int, permanent: bool) -> bool:
        cfg = self.config
        if permanent and attempts >= cfg.permanent_attempts:
            return True
        return cfg.max_attempts is not None and attempts >= cfg.max_attempts

    def _params(
        self, event: Event, row: ParkedRow, error: str | None, now: float
    ) -> tuple[Any, ...]:
        return (
            self.name,
            event.commit_lsn,
            event.seq,
            event.id,
            [T.encode_key(k) for k in event.keys],
            event.op,
            event.table or "",
            event.xid,
            event.committed_at,
            event.body,
            len(event.body),
            row.attempts,
            error,
            row.permanent,
            row.dead,
            row.skipped,
            datetime.fromtimestamp(now, UTC),
            datetime.fromtimestamp(now, UTC) if error is not None else None,
            datetime.fromtimestamp(row.next_at, UTC),
            _route_param(event),
        )

    def _consider(self, row: ParkedRow) -> None:
        if self.index.consider(row):
            self._loop.wake()

    def _forget(self, row: ParkedRow) -> None:
        blocking = row.blocking
        self.index.forget(row)
        if blocking:
            self._unblocked()

    def _unblock(self, row: ParkedRow) -> None:
        self.index.unblock(row)
        self._unblocked()

    def _unblocked(self) -> None:
        """A row stopped blocking: the cap may lift, and its keys may flow again."""
        self._loop.wake()  # the rows it held back may be due
        self._check_cap()
        if not self.index.active:
            self._host.wake()

    def _check_cap(self) -> None:
        change = self.index.check_cap()
        if change == "paused":
            self.pauses_total += 1
            self._unpaused.clear()
            cfg = self.config
            log.critical(
                "%s: destination %s has %d parked event(s), %d bytes (cap: parking.max_events"
                " %d, parking.max_bytes %d); reading the stream stops until the backlog"
                " drains below %d%% of the cap -- fix the destination, or see"
                " `walrelay parking list`",
                PAUSED_MESSAGE,
                self.name,
                self.index.count,
                self.index.nbytes,
                cfg.max_events,
                cfg.max_bytes,
                int(RESUME_FRACTION * 100),
            )
        elif change == "resumed":
            self._unpaused.set()
            log.warning(
                "%s: destination %s has %d parked event(s)",
                RESUMED_MESSAGE,
                self.name,
                self.index.count,
            )
            self._host.wake()

    def _log_dead(self, rows: Iterable[ParkedRow], error: str | None) -> None:
        for row in rows:
            if row.skipped:
                log.error(
                    "destination %s: event %s is dead after %d attempt(s) (%s); skipped"
                    " (on_dead: skip_dead): later events of its key go on without it; it"
                    " stays in the parked-events table",
                    self.name,
                    row.id,
                    row.attempts,
                    error,
                )
            else:
                log.error(
                    "destination %s: event %s is dead after %d attempt(s) (%s); its key stays"
                    " blocked until `walrelay parking retry` or `walrelay parking discard`",
                    self.name,
                    row.id,
                    row.attempts,
                    error,
                )

    # -- completions (the store's writer calls them after commit) --------------------------

    def _parked(self, write: ParkRows) -> None:
        self.parked_total += len(write.rows)
        failpoints.hit(failpoints.RETRY_AFTER_PARK)
        for row in write.rows:
            row.committed = True
            if row.skipped:
                self.skipped_total += 1
            elif row.dead:
                self.dead_total += 1
            self._consider(row)
        if write.diverted:
            self._host.finish_diverted(write.diverted)
        if write.future is not None and not write.future.done():
            write.future.set_result(None)

    def _deleted(self, write: DeleteRow) -> None:
        row = write.row
        failpoints.hit(failpoints.RETRY_AFTER_DELETE)
        self._loop.release_slot(row)
        self._forget(row)
        if not row.gone:
            self.delivered_total += 1
            log.info(
                "destination %s: delivered parked event %s (after %d failed attempt(s))",
                self.name,
                row.id,
                row.attempts,
            )

    def _updated(self, write: UpdateRow) -> None:
        row = write.row
        self._loop.release_slot(row)
        if row.gone:
            self._forget(row)
            return
        if write.superseded:
            # The row changed in the table during the attempt: what is there
            # now wins, and the index follows it once re-read.
            log.info(
                "destination %s: event %s changed in the table during its attempt; re-reading it",
                self.name,
                row.id,
            )
            self.reread()
            return
        attempts, error, _, _, _, next_at, *_ = write.params
        row.attempts = attempts
        row.permanent = write.permanent
        row.dead = write.dead
        row.next_at = next_at.timestamp()
        if write.dead:
            self.dead_total += 1
            self._log_dead([row], error)
        if write.skipped:
            row.skipped = True
            self.skipped_total += 1
            if row.blocking:
                self._unblock(row)
            return
        self._consider(row)

    # -- the table changed under us (load at start-up, `walrelay parking`) ---------------------

    def reread(self) -> None:
        """Re-read this destination's rows, behind every write queued so far."""
        self._table.enqueue(ReadRows(self.name, self._reread))

    def _reread(self, write: ReadRows) -> None:
        self.apply_rows(write.snapshot, initial=False)

    def apply_rows(self, snapshot: list[tuple[Any, ...]], *, initial: bool) -> None:
        """Make the index match the table (committed rows only; busy ones are left
        to their outcome). ``initial``: the load at start-up."""
        index = self.index
        seen: set[tuple[int, int]] = set()
        for (
            lsn,
            seq,
            keys,
            size,
            attempts,
            dead,
            skipped,
            permanent,
            next_at,
            first_at,
            revision,
        ) in snapshot:
            ident = (int(lsn), int(seq))
            seen.add(ident)
            row = index.get(ident)
            next_ts = float(next_at)
            if row is None:
                row = ParkedRow(
                    ident,
                    (T.decode_key(k) for k in keys),
                    int(size),
                    attempts=int(attempts),
                    dead=bool(dead),
                    skipped=bool(skipped),
                    permanent=bool(permanent),
                    next_at=next_ts,
                    first_at=float(first_at),
                    committed=True,
                    revision=int(revision),
                )
                index.add(row)
                self._consider(row)
                continue
            if not row.committed or row.busy:
                continue
            if (row.dead, row.skipped, row.attempts, row.revision) == (
                bool(dead),
                bool(skipped),
                int(attempts),
                int(revision),
            ) and abs(row.next_at - next_ts) < 0.001:
                continue
            if not initial:
                log.info(
                    "destination %s: event %s changed in the table; applying", self.name, row.id
                )
            row.dead = bool(dead)
            row.attempts = int(attempts)
            row.revision = int(revision)
            row.next_at = next_ts
            row.permanent = bool(permanent)
            if row.skipped != bool(skipped):
                if row.blocking:
                    self._unblock(row)
                row.skipped = bool(skipped)
                if not row.skipped:
                    index.block(row)
            self._consider(row)
        for ident, row in list(index.rows.items()):
            if ident in seen or not row.committed or row.gone:
                continue
            self.discarded_total += 1
            if row.busy:
                row.gone = True
                continue
            log.warning("destination %s: parked event %s was discarded", self.name, row.id)
            self._forget(row)
        self._loop.wake()

    def dead_to_skip(self) -> list[ParkedRow]:
        """Dead rows not yet skipped (``on_dead: skip_dead`` skips them at load)."""
        return [r for r in self.index.rows.values() if r.dead and not r.skipped]

    def skip(self, rows: Iterable[ParkedRow]) -> None:
        """``rows`` were marked skipped in the table: their keys move on."""
        for row in rows:
            row.skipped = True
            if row.blocking:
                self._unblock(row)

    # -- for monitoring -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Parked and dead counts, oldest parked age (seconds), bytes, flags."""
        now = time.time()
        parked = dead = 0
        oldest: float | None = None
        for row in self.index.rows.values():
            if row.dead:
                dead += 1
                continue
            parked += 1
            if oldest is None or row.first_at < oldest:
                oldest = row.first_at
        return {
            "parked": parked,
            "dead": dead,
            "oldest_parked_age_seconds": None if oldest is None else max(0.0, now - oldest),
            "parked_bytes": self.index.nbytes,
            "blocked_keys": self.index.blocked_keys,
            "paused": self.index.paused,
            "parked_total": self.parked_total,
            "delivered_total": self.delivered_total,
            "retry_failures_total": self.retry_failures_total,
            "dead_total": self.dead_total,
            "skipped_total": self.skipped_total,
            "discarded_total": self.discarded_total,
            "pauses_total": self.pauses_total,
        }

    def oldest_commit_lsn(self) -> int | None:
        """Commit LSN of the oldest event in the table (a ledger must not trim
        above it: those events are still to be delivered)."""
        return self.index.oldest_commit_lsn()
