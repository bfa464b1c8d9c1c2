"""Failed deliveries: parked in PostgreSQL, retried with backoff, in key order.

ARCHITECTURE section 1, "RetryStore". One :class:`RetryStore` per engine owns
the connections to the state database and the table
``<state schema>.failed_events`` (:mod:`walrelay.state.failed`); one
:class:`DestinationRetry` per destination (with an unordered sink) keeps an
index of that destination's rows in memory and runs its retry loop.

How an event gets there
    * **parked after failing**: the scheduler retried a batch in memory
      ``failed.park_after`` times (a permanent rejection: at once) and asked
      :meth:`DestinationRetry.on_failure`; the rows are *committed* before the
      answer is ``"parked"``, and only then does the LSN tracker count the
      events as finished -- the slot moves on during a long outage;
    * **diverted**: while a key has parked events, every later event sharing
      one of its keys is parked behind them (:meth:`DestinationRetry.blocks`,
      :meth:`DestinationRetry.divert`), finished once committed. Other keys
      keep flowing. A TRUNCATE (no key: a barrier) taken while anything is
      parked is parked too, and then everything after it goes behind it.

How it leaves
    The retry loop delivers, per key, only the oldest parked event (a barrier
    only when it is the oldest of all), when its ``next_attempt_at`` is due.
    Success deletes the row (committed before the key moves on); the next
    event of the key was parked with ``next_attempt_at`` = its parking time,
    so it is due at once. Failure counts the attempt and persists the next
    time: ``failed.backoff`` (exponential, full jitter; a ``Retry-After`` is
    honoured up to ``backoff.max``). A restart loads the rows and their times,
    so the schedule is neither reset nor skipped. When a key has nothing
    parked any more, its live events flow again; as the key counts events
    still being written, a live event can never overtake the backlog.

Dead events
    Past ``failed.max_attempts`` (default: never), or ``failed.permanent_attempts``
    for permanent rejections (HTTP 400/404/413/422...), an event is *dead*: it
    stays in the table and its key stays blocked (``on_dead: block``, logged
    at ERROR) until ``walrelay failed retry`` or ``discard``; with
    ``on_dead: skip_dead`` it is marked skipped, logged and counted, and its
    key moves on.

The cap
    ``failed.max_events`` / ``failed.max_bytes`` per destination. Reaching one
    logs :data:`PAUSED_MESSAGE` at CRITICAL (a page) and sets
    :attr:`DestinationRetry.paused`: the destination's ``put`` waits, so the
    engine stops reading the stream (status updates go on), and no more events
    are parked (a failing batch keeps retrying in memory, diverted events stay
    in the buffer). When the backlog drains below 90% of the cap, replication
    resumes. Nothing is dropped.

``walrelay failed retry|discard`` change rows while walrelay runs and send a
NOTIFY; the store re-reads the table and applies the change (a discarded
event unblocks its key once nothing else of the key is parked).

Writes go through one writer task in FIFO order, batched into one transaction
(parks of many events cost one commit), so a key's events reach the table in
id order and completions are applied in the order they were made durable.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from walrelay import failpoints
from walrelay.config import FailedConfig, masked_dsn
from walrelay.errors import SinkError, SourceSetupError
from walrelay.model import Event, format_event_id
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.scheduler import FailureDecision
from walrelay.state import failed as T
from walrelay.state.migrations import migrate

if TYPE_CHECKING:
    from walrelay.pipeline.scheduler import Destination

__all__ = ["PAUSED_MESSAGE", "RESUMED_MESSAGE", "DestinationRetry", "RetryStore"]

log = logging.getLogger("walrelay.retry")

PAUSED_MESSAGE = "replication paused: parked-event cap reached"
"""Stable prefix of the CRITICAL log line when a destination's cap is reached."""
RESUMED_MESSAGE = "replication resumed: parked-event backlog below its cap"

_RESUME_FRACTION = 0.9
_WRITE_BATCH = 2000
_Ident = tuple[int, int]  # (commit_lsn, seq)
_DbConn = psycopg.AsyncConnection[tuple[Any, ...]]


def _unique(keys: tuple[str, ...]) -> tuple[str, ...]:
    if len(keys) < 2 or (len(keys) == 2 and keys[0] != keys[1]):
        return keys
    return tuple(dict.fromkeys(keys))


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:1997] + "..."


class _Row:
    """One parked event of one destination, as the store indexes it (no payload)."""

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
        ident: _Ident,
        keys: tuple[str, ...],
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
        self.keys = _unique(keys)
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


# ---------------------------------------------------------------------------- writes


class _Op:
    """A write, applied in FIFO order by the writer task; ``done`` runs after commit."""

    __slots__ = ("dest",)

    def __init__(self, dest: DestinationRetry) -> None:
        self.dest = dest

    def done(self) -> None:
        raise NotImplementedError


class _Park(_Op):
    __slots__ = ("finish", "future", "params", "rows")

    def __init__(
        self,
        dest: DestinationRetry,
        rows: list[_Row],
        params: list[tuple[Any, ...]],
        finish: list[Event],
        future: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(dest)
        self.rows = rows
        self.params = params
        self.finish = finish  # diverted events to report finished
        self.future = future

    def done(self) -> None:
        self.dest._parked(self)


class _Delete(_Op):
    __slots__ = ("row",)

    def __init__(self, dest: DestinationRetry, row: _Row) -> None:
        super().__init__(dest)
        self.row = row

    def done(self) -> None:
        self.dest._deleted(self.row)


class _Update(_Op):
    """An attempt's outcome, written only over the revision the engine last read;
    ``superseded`` when the row changed meanwhile (``walrelay failed retry``)."""

    __slots__ = ("dead", "params", "permanent", "row", "skipped", "superseded")

    def __init__(
        self,
        dest: DestinationRetry,
        row: _Row,
        *,
        attempts: int,
        error: str | None,
        permanent: bool,
        dead: bool,
        skipped: bool,
        next_at: float,
        attempted_at: float | None,
    ) -> None:
        super().__init__(dest)
        self.row = row
        self.permanent = permanent
        self.dead = dead
        self.skipped = skipped
        self.superseded = False
        self.params = (
            attempts,
            error,
            permanent,
            dead,
            skipped,
            datetime.fromtimestamp(next_at, UTC),
            datetime.fromtimestamp(attempted_at, UTC) if attempted_at is not None else None,
            dest.name,
            row.ident[0],
            row.ident[1],
            row.revision,
        )

    def done(self) -> None:
        self.dest._updated(self)


class _Reconcile(_Op):
    """Re-read the destination's rows (after ``walrelay failed retry|discard``)."""

    __slots__ = ("snapshot",)

    def __init__(self, dest: DestinationRetry) -> None:
        super().__init__(dest)
        self.snapshot: list[tuple[Any, ...]] = []

    def done(self) -> None:
        self.dest._apply_snapshot(self.snapshot, initial=False)


class _Connection:
    """One connection to the state database, reopened after errors."""

    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        self._name = name
        self._conn: _DbConn | None = None
        self.lock = asyncio.Lock()

    async def get(self) -> _DbConn:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, application_name=self._name, connect_timeout=10
            )
        return conn

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


# ---------------------------------------------------------------------------- per destination


class DestinationRetry:
    """One destination's parked events: the key index, the cap, the retry loop.

    Implements :class:`walrelay.pipeline.scheduler.Parking`. Monitoring reads
    :meth:`stats` (parked count, dead count, oldest parked age, ...) and
    :attr:`paused`.
    """

    def __init__(
        self, store: RetryStore, name: str, config: FailedConfig, *, max_in_flight: int = 32
    ) -> None:
        self.store = store
        self.name = name
        self.config = config
        self.backoff = Backoff(
            initial=config.backoff.initial,
            multiplier=config.backoff.multiplier,
            maximum=config.backoff.max,
        )
        self.max_in_flight = max_in_flight
        self._dest: Destination | None = None
        self._rows: dict[_Ident, _Row] = {}
        # Blocking rows (parked, not skipped), per key, oldest first.
        self._by_key: dict[str, deque[_Row]] = {}
        self._barriers: list[_Row] = []  # blocking rows without keys, oldest first
        self._before_barrier = 0  # keyed blocking rows older than the first barrier
        self._ready: list[tuple[float, int, int, int, _Row]] = []  # heap by next_at (lazy)
        self._tick = 0
        self.count = 0  # blocking rows, committed or queued: what the cap bounds
        self.nbytes = 0
        self._paused = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._wake = asyncio.Event()
        self._busy = 0
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        # Counters since start.
        self.parked_total = 0  # events written to the table
        self.delivered_total = 0  # parked events delivered by the retry loop
        self.retry_failures_total = 0
        self.dead_total = 0
        self.skipped_total = 0
        self.discarded_total = 0
        self.pauses_total = 0

    def __repr__(self) -> str:
        return f"<DestinationRetry {self.name!r} parked={self.count} paused={self._paused}>"

    # -- the Parking protocol ---------------------------------------------------

    def bind(self, destination: Destination) -> None:
        self._dest = destination

    @property
    def active(self) -> bool:
        return bool(self._by_key) or bool(self._barriers)

    @property
    def paused(self) -> bool:
        return self._paused

    async def wait_unpaused(self) -> None:
        await self._unpaused.wait()

    def blocks(self, event: Event) -> bool:
        if self._barriers:
            return True
        by_key = self._by_key
        keys = event.keys
        if not keys:
            return bool(by_key)
        return any(k in by_key for k in keys)

    def divert(self, events: list[Event]) -> bool:
        if self._paused:
            return False
        now = time.time()
        rows: list[_Row] = []
        params: list[tuple[Any, ...]] = []
        for event in events:
            ident = (event.commit_lsn, event.seq)
            known = self._rows.get(ident)
            if known is not None and not known.skipped:
                continue  # a replay of an event parked before a restart
            row = _Row(ident, event.keys, len(event.body), next_at=now, first_at=now)
            self._insert(row, known)
            rows.append(row)
            params.append(self._params(event, row, None, now))
        self.store._enqueue(_Park(self, rows, params, list(events)))
        self._check_cap()
        return True

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        cfg = self.config
        permanent = isinstance(error, SinkError) and error.permanent
        if not permanent and attempts < cfg.park_after:
            return "retry"
        if self._paused:
            return "retry"  # at the cap: keep it in memory (holds its key)
        now = time.time()
        retry_after = error.retry_after if isinstance(error, SinkError) else None
        dead = self._is_dead(attempts, permanent)
        skipped = dead and cfg.on_dead == "skip_dead"
        text = _error_text(error)
        rows: list[_Row] = []
        params: list[tuple[Any, ...]] = []
        for event in batch:
            ident = (event.commit_lsn, event.seq)
            known = self._rows.get(ident)
            if known is not None and not known.skipped:
                continue  # cannot happen (its key would be blocked); already parked
            row = _Row(
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
            self._insert(row, known)
            rows.append(row)
            params.append(self._params(event, row, text, now))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.store._enqueue(_Park(self, rows, params, [], future))
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

    # -- index ------------------------------------------------------------------

    def _is_dead(self, attempts: int, permanent: bool) -> bool:
        cfg = self.config
        if permanent and attempts >= cfg.permanent_attempts:
            return True
        return cfg.max_attempts is not None and attempts >= cfg.max_attempts

    def _params(self, event: Event, row: _Row, error: str | None, now: float) -> tuple[Any, ...]:
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

    def _insert(self, row: _Row, replaces: _Row | None) -> None:
        if replaces is not None:  # a skipped row parked again: the new one wins
            self._forget(replaces)
        self._rows[row.ident] = row
        if not row.skipped:
            self._add_blocking(row)

    def _forget(self, row: _Row) -> None:
        if self._rows.get(row.ident) is row:
            del self._rows[row.ident]
        if row.blocking:
            self._remove_blocking(row)

    def _add_blocking(self, row: _Row) -> None:
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
                else:  # out of order (reconcile): rare
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

    def _count_before_barrier(self) -> None:
        """Recount after the first barrier changed (rare: O(parked events))."""
        barriers = self._barriers
        if not barriers:
            self._before_barrier = 0
            return
        first = barriers[0].ident
        self._before_barrier = sum(
            1 for r in self._rows.values() if r.blocking and r.keys and r.ident < first
        )

    def _remove_blocking(self, row: _Row) -> None:
        row.blocking = False
        self.count -= 1
        self.nbytes -= row.size
        candidates: list[_Row] = []
        by_key = self._by_key
        barrier_was_first = False
        if row.keys:
            barriers = self._barriers
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
            barriers = self._barriers
            barrier_was_first = bool(barriers) and barriers[0] is row
            with contextlib.suppress(ValueError):
                barriers.remove(row)
            if barrier_was_first:
                self._count_before_barrier()
                candidates.extend(queue[0] for queue in by_key.values())
                if barriers:
                    candidates.append(barriers[0])
        for candidate in candidates:
            self._consider(candidate)
        self._check_cap()
        if self._dest is not None and not self.active:
            self._dest.wake()

    def _is_head(self, row: _Row) -> bool:
        if not row.blocking:
            return False
        if not row.keys:
            barriers = self._barriers
            return bool(barriers) and barriers[0] is row and not self._before_barrier
        barriers = self._barriers
        if barriers and barriers[0].ident < row.ident:
            return False
        by_key = self._by_key
        return all(by_key[key][0] is row for key in row.keys)

    def _eligible(self, row: _Row) -> bool:
        return row.committed and not row.dead and not row.busy and self._is_head(row)

    def _consider(self, row: _Row) -> None:
        """Schedule ``row`` if it may be delivered (first of its keys, alive)."""
        if self._eligible(row):
            self._schedule(row)
            self._wake.set()

    def _schedule(self, row: _Row) -> None:
        self._tick += 1
        heapq.heappush(self._ready, (row.next_at, row.ident[0], row.ident[1], self._tick, row))

    def _check_cap(self) -> None:
        cfg = self.config
        if not self._paused:
            if self.count >= cfg.max_events or self.nbytes >= cfg.max_bytes:
                self._paused = True
                self.pauses_total += 1
                self._unpaused.clear()
                log.critical(
                    "%s: destination %s has %d parked event(s), %d bytes (cap: failed.max_events"
                    " %d, failed.max_bytes %d); reading the stream stops until the backlog"
                    " drains below %d%% of the cap -- fix the destination, or see"
                    " `walrelay failed list`",
                    PAUSED_MESSAGE,
                    self.name,
                    self.count,
                    self.nbytes,
                    cfg.max_events,
                    cfg.max_bytes,
                    int(_RESUME_FRACTION * 100),
                )
        elif (
            self.count < cfg.max_events * _RESUME_FRACTION
            and self.nbytes < cfg.max_bytes * _RESUME_FRACTION
        ):
            self._paused = False
            self._unpaused.set()
            log.warning(
                "%s: destination %s has %d parked event(s)", RESUMED_MESSAGE, self.name, self.count
            )
            if self._dest is not None:
                self._dest.wake()

    # -- completions (called by the writer after commit) -------------------------

    def _parked(self, op: _Park) -> None:
        self.parked_total += len(op.rows)
        failpoints.hit(failpoints.RETRY_AFTER_PARK)
        for row in op.rows:
            row.committed = True
            if row.skipped:
                self.skipped_total += 1
            elif row.dead:
                self.dead_total += 1
            self._consider(row)
        if op.finish and self._dest is not None:
            self._dest.finish_diverted(op.finish)
        if op.future is not None and not op.future.done():
            op.future.set_result(None)

    def _deleted(self, row: _Row) -> None:
        failpoints.hit(failpoints.RETRY_AFTER_DELETE)
        self._unbusy(row)
        self._forget(row)
        if not row.gone:
            self.delivered_total += 1
            log.info(
                "destination %s: delivered parked event %s (after %d failed attempt(s))",
                self.name,
                row.id,
                row.attempts,
            )

    def _unbusy(self, row: _Row) -> None:
        """``row``'s attempt is over and its outcome written: free its slot."""
        row.busy = False
        self._busy -= 1
        if self._dest is not None:
            self._dest.release(1)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _updated(self, op: _Update) -> None:
        row = op.row
        self._unbusy(row)
        if row.gone:
            self._forget(row)
            return
        if op.superseded:
            # The row changed in the table during the attempt: what is there
            # now wins, and the index follows it once re-read.
            log.info(
                "destination %s: event %s changed in the table during its attempt; re-reading it",
                self.name,
                row.id,
            )
            self.store._enqueue(_Reconcile(self))
            return
        attempts, error, _, _, _, next_at, *_ = op.params
        row.attempts = attempts
        row.permanent = op.permanent
        row.dead = op.dead
        row.next_at = next_at.timestamp()
        if op.dead:
            self.dead_total += 1
            self._log_dead([row], error)
        if op.skipped:
            row.skipped = True
            self.skipped_total += 1
            if row.blocking:
                self._remove_blocking(row)
            return
        self._consider(row)

    def _log_dead(self, rows: Iterable[_Row], error: str | None) -> None:
        for row in rows:
            if row.skipped:
                log.error(
                    "destination %s: event %s is dead after %d attempt(s) (%s); skipped"
                    " (on_dead: skip_dead): later events of its key go on without it; it"
                    " stays in the failed-events table",
                    self.name,
                    row.id,
                    row.attempts,
                    error,
                )
            else:
                log.error(
                    "destination %s: event %s is dead after %d attempt(s) (%s); its key stays"
                    " blocked until `walrelay failed retry` or `walrelay failed discard`",
                    self.name,
                    row.id,
                    row.attempts,
                    error,
                )

    def _apply_snapshot(self, snapshot: list[tuple[Any, ...]], *, initial: bool) -> None:
        """Make the index match the table (committed rows only; busy ones are left
        to their outcome). ``initial``: the load at start-up."""
        seen: set[_Ident] = set()
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
            row = self._rows.get(ident)
            next_ts = float(next_at)
            if row is None:
                row = _Row(
                    ident,
                    tuple(T.decode_key(k) for k in keys),
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
                self._insert(row, None)
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
                    self._remove_blocking(row)
                row.skipped = bool(skipped)
                if not row.skipped:
                    self._add_blocking(row)
            self._consider(row)
        for ident, row in list(self._rows.items()):
            if ident in seen or not row.committed or row.gone:
                continue
            self.discarded_total += 1
            if row.busy:
                row.gone = True
                continue
            log.warning("destination %s: parked event %s was discarded", self.name, row.id)
            self._forget(row)
        self._wake.set()

    # -- the retry loop -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"walrelay-retry-{self.name}"
            )

    async def stop(self) -> None:
        tasks = list(self._attempts)
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._unpaused.set()  # let a waiting put see the stop

    async def _run(self) -> None:
        ready = self._ready
        wake = self._wake
        while True:
            wake.clear()
            now = time.time()
            due: list[_Row] = []
            while ready and self._busy + len(due) < self.max_in_flight:
                next_at, _, _, _, row = ready[0]
                if next_at != row.next_at or not self._eligible(row):
                    heapq.heappop(ready)  # stale entry
                    continue
                if next_at > now:
                    break
                heapq.heappop(ready)
                if not due or all(r is not row for r in due):  # a row may be queued twice
                    due.append(row)
            timeout: float | None = None
            if due:
                # Parked events share the destination's max_in_flight with live ones.
                dest = self._dest
                granted = dest.reserve(len(due)) if dest is not None else len(due)
                for row in due[granted:]:
                    self._schedule(row)  # no slot now: a finished delivery wakes us
                batch = due[:granted]
                if batch:
                    for row in batch:
                        row.busy = True
                    self._busy += len(batch)
                    task = asyncio.get_running_loop().create_task(self._attempt(batch))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)
                    continue
            elif ready and self._busy < self.max_in_flight:
                timeout = max(0.0, ready[0][0] - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    async def _attempt(self, rows: list[_Row]) -> None:
        dest = self._dest
        assert dest is not None
        try:
            events = await self.store._fetch(self.name, [r.ident for r in rows])
        except psycopg.Error as e:
            log.warning(
                "destination %s: cannot read parked events from the state database (%s); retrying",
                self.name,
                str(e).strip(),
            )
            delay = min(5.0, self.backoff.maximum)
            for row in rows:
                self._release(row, time.time() + delay)
            return
        await asyncio.gather(*(self._attempt_one(dest, row, events.get(row.ident)) for row in rows))

    def _release(self, row: _Row, next_at: float) -> None:
        row.next_at = max(row.next_at, next_at)
        self._unbusy(row)
        self._consider(row)

    async def _attempt_one(self, dest: Destination, row: _Row, event: Event | None) -> None:
        if event is None:  # discarded from the table meanwhile
            self._unbusy(row)
            self.discarded_total += 1
            self._forget(row)
            return
        try:
            await dest.deliver_parked([event])
        except SinkError as exc:
            error: BaseException = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "destination %s: sink raised %s on a parked event (a bug in the sink);"
                " treated as a transient failure",
                self.name,
                type(exc).__name__,
            )
            error = exc
        else:
            self.store._enqueue(_Delete(self, row))
            return
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
        self.store._enqueue(
            _Update(
                self,
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

    # -- for monitoring -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Parked and dead counts, oldest parked age (seconds), bytes, flags."""
        now = time.time()
        parked = dead = 0
        oldest: float | None = None
        for row in self._rows.values():
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
            "parked_bytes": self.nbytes,
            "blocked_keys": len(self._by_key),
            "paused": self._paused,
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
        if not self._rows:
            return None
        return min(self._rows)[0]


def _route_param(event: Event) -> Jsonb | None:
    """The ``route`` column of a parked event: routed events keep their route."""
    route = T.route_to_json(event.route)
    return None if route is None else Jsonb(route)


def _ident(row: _Row) -> _Ident:
    return row.ident


# ---------------------------------------------------------------------------- the store


class RetryStore:
    """The failed-events table of one state database, for all destinations."""

    def __init__(self, dsn: str, schema: str = "walrelay") -> None:
        self._dsn = dsn
        self.schema = schema
        self.destinations: dict[str, DestinationRetry] = {}
        self._writer = _Connection(dsn, "walrelay-retry")
        self._reader = _Connection(dsn, "walrelay-retry-read")
        self._ops: deque[_Op] = deque()
        self._ops_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._table = T.table(schema)
        self._insert = sql.SQL(
            "insert into {} (destination, commit_lsn, seq, event_id, keys, op, table_name, xid,"
            " committed_at, payload, size, attempts, last_error, permanent, dead, skipped,"
            " first_failed_at, last_attempt_at, next_attempt_at, route)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)"
            " on conflict (destination, commit_lsn, seq) do update set"
            " attempts = excluded.attempts, last_error = excluded.last_error,"
            " permanent = excluded.permanent, dead = excluded.dead, skipped = excluded.skipped,"
            " first_failed_at = excluded.first_failed_at,"
            " last_attempt_at = excluded.last_attempt_at,"
            " next_attempt_at = excluded.next_attempt_at"
        ).format(self._table)
        self._delete = sql.SQL(
            "delete from {} where destination = %s and commit_lsn = %s and seq = %s"
        ).format(self._table)
        self._update = sql.SQL(
            "update {} set attempts = %s, last_error = %s, permanent = %s, dead = %s,"
            " skipped = %s, next_attempt_at = %s, last_attempt_at = coalesce(%s, last_attempt_at)"
            " where destination = %s and commit_lsn = %s and seq = %s and revision = %s"
        ).format(self._table)
        self._select = sql.SQL(
            "select commit_lsn, seq, keys, size, attempts, dead, skipped, permanent,"
            " extract(epoch from next_attempt_at), extract(epoch from first_failed_at), revision"
            " from {} where destination = %s order by commit_lsn, seq"
        ).format(self._table)
        self._fetch_sql = sql.SQL(
            "select commit_lsn, seq, op, table_name, xid, committed_at, keys, payload, route"
            " from {}"
            " where destination = %s and (commit_lsn, seq) in"
            " (select * from unnest(%s::bigint[], %s::int[]))"
        ).format(self._table)

    def __repr__(self) -> str:
        return f"RetryStore({masked_dsn(self._dsn)!r}, schema={self.schema!r})"

    @property
    def paused(self) -> bool:
        """True while any destination is at its cap (replication paused)."""
        return any(d.paused for d in self.destinations.values())

    def add_destination(
        self, name: str, config: FailedConfig, *, max_in_flight: int = 32
    ) -> DestinationRetry:
        dest = DestinationRetry(self, name, config, max_in_flight=max_in_flight)
        self.destinations[name] = dest
        return dest

    # -- lifecycle ----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or upgrade the state schema."""
        try:
            conn = await self._writer.get()
            await migrate(conn, self.schema)
        except psycopg.OperationalError as e:
            await self._writer.reset()
            raise SourceSetupError(
                f"cannot connect to the state database ({masked_dsn(self._dsn)}): {str(e).strip()}",
                fix="check state.dsn (default: source.dsn) and the server",
            ) from None

    async def load(self) -> None:
        """Read every destination's parked events (before replication starts)."""
        conn = await self._writer.get()
        for dest in self.destinations.values():
            cur = await conn.execute(self._select, (dest.name,))
            rows = await cur.fetchall()
            dest._apply_snapshot(rows, initial=True)
            if dest.config.on_dead == "skip_dead":
                await self._skip_dead(conn, dest)
            if rows:
                stats = dest.stats()
                log.warning(
                    "destination %s: %d parked and %d dead event(s) in %s.failed_events;"
                    " retrying them in key order",
                    dest.name,
                    stats["parked"],
                    stats["dead"],
                    self.schema,
                )
        cur = await conn.execute(
            sql.SQL(
                "select destination, count(*) from {} where destination <> all(%s) group by 1"
            ).format(self._table),
            (list(self.destinations),),
        )
        for name, n in await cur.fetchall():
            log.warning(
                "%d parked event(s) of destination %r, which is not configured, stay in"
                " %s.failed_events (see `walrelay failed list`)",
                n,
                name,
                self.schema,
            )

    async def _skip_dead(self, conn: _DbConn, dest: DestinationRetry) -> None:
        rows = [r for r in dest._rows.values() if r.dead and not r.skipped]
        if not rows:
            return
        await conn.execute(
            sql.SQL(
                "update {} set skipped = true where destination = %s and dead and not skipped"
            ).format(self._table),
            (dest.name,),
        )
        for row in rows:
            row.skipped = True
            if row.blocking:
                dest._remove_blocking(row)
        log.warning(
            "destination %s: %d dead event(s) skipped (on_dead: skip_dead)", dest.name, len(rows)
        )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._write_loop(), name="walrelay-retry-writer"))
        self._tasks.append(loop.create_task(self._listen_loop(), name="walrelay-retry-listen"))
        for dest in self.destinations.values():
            dest.start()

    async def close(self) -> None:
        for dest in self.destinations.values():
            await dest.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._writer.reset()
        await self._reader.reset()

    # -- the writer -------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        self._ops.append(op)
        self._ops_wake.set()

    def _next_batch(self) -> list[_Op]:
        ops = self._ops
        if isinstance(ops[0], _Reconcile):
            return [ops[0]]
        batch: list[_Op] = []
        for op in ops:
            if isinstance(op, _Reconcile) or len(batch) >= _WRITE_BATCH:
                break
            batch.append(op)
        return batch

    async def _write_loop(self) -> None:
        backoff = Backoff(initial=0.1, multiplier=2.0, maximum=10.0)
        while True:
            if not self._ops:
                self._ops_wake.clear()
                await self._ops_wake.wait()
                continue
            batch = self._next_batch()
            attempt = 0
            while True:
                try:
                    conn = await self._writer.get()
                    await self._apply(conn, batch)
                    break
                except psycopg.Error as e:
                    attempt += 1
                    delay = backoff.delay(attempt)
                    if attempt == 1 or attempt % 10 == 0:
                        log.error(
                            "failed-events store: cannot write to %s.failed_events (%s);"
                            " retrying in %.1fs (attempt %d); parked events wait in memory",
                            self.schema,
                            str(e).strip() or type(e).__name__,
                            delay,
                            attempt,
                        )
                    await self._writer.reset()
                    await asyncio.sleep(delay)
            for _ in batch:
                self._ops.popleft()
            for op in batch:
                try:
                    op.done()
                except Exception:
                    log.exception("failed-events store: completing a write failed")

    async def _apply(self, conn: _DbConn, batch: list[_Op]) -> None:
        if len(batch) == 1 and isinstance(batch[0], _Reconcile):
            reconcile = batch[0]
            cur = await conn.execute(self._select, (reconcile.dest.name,))
            reconcile.snapshot = await cur.fetchall()
            return
        inserts: list[tuple[Any, ...]] = []
        deletes: list[tuple[Any, ...]] = []
        updates: list[_Update] = []
        for op in batch:
            if isinstance(op, _Park):
                inserts.extend(op.params)
            elif isinstance(op, _Delete):
                deletes.append((op.dest.name, op.row.ident[0], op.row.ident[1]))
            elif isinstance(op, _Update):
                updates.append(op)
        async with conn.transaction(), conn.cursor() as cur:
            if inserts:
                await cur.executemany(self._insert, inserts)
            if deletes:
                await cur.executemany(self._delete, deletes)
            for update in updates:  # one by one: each needs its row count
                await cur.execute(self._update, update.params)
                update.superseded = cur.rowcount == 0

    # -- reads ---------------------------------------------------------------------------

    async def _fetch(self, destination: str, idents: list[_Ident]) -> dict[_Ident, Event]:
        reader = self._reader
        async with reader.lock:
            try:
                conn = await reader.get()
                cur = await conn.execute(
                    self._fetch_sql,
                    (destination, [i[0] for i in idents], [i[1] for i in idents]),
                )
                rows = await cur.fetchall()
            except psycopg.Error:
                await reader.reset()
                raise
        out: dict[_Ident, Event] = {}
        for lsn, seq, op, table_name, xid, committed_at, keys, payload, route in rows:
            ident = (int(lsn), int(seq))
            out[ident] = Event(
                commit_lsn=ident[0],
                seq=ident[1],
                op=op,
                table=table_name,
                keys=tuple(T.decode_key(k) for k in keys),
                body=bytes(payload),
                xid=int(xid),
                committed_at=committed_at,
                route=T.route_from_json(route),
            )
        return out

    # -- changes made by `walrelay failed` ----------------------------------------------

    def reconcile(self) -> None:
        """Re-read every destination's rows (queued behind pending writes)."""
        for dest in self.destinations.values():
            self._enqueue(_Reconcile(dest))

    async def _listen_loop(self) -> None:
        backoff = Backoff(initial=0.5, multiplier=2.0, maximum=30.0)
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name="walrelay-retry-listen"
                )
                async with conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(T.CHANNEL)))
                    self.reconcile()  # changes made while we were not listening
                    attempt = 0
                    async for note in conn.notifies():
                        if note.payload == self.schema:
                            self.reconcile()
            except psycopg.Error as e:
                attempt += 1
                delay = backoff.delay(attempt)
                log.warning(
                    "failed-events store: lost the LISTEN connection (%s); reconnecting in %.1fs",
                    str(e).strip() or type(e).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
