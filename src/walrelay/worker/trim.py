"""Trimming a worker's dedup state: ledger rows and ``applied_events`` rows.

What a worker writes per delivered event: a non-transactional sink
(webhook, RabbitMQ, Kafka ``at_least_once``, ...) one ledger row (key
``<worker.slot>/<destination>``, in the state database or Redis), the
PostgreSQL sink one ``applied_events`` row (``destination``, event id,
commit LSN) in the target's transaction. Both are shared by the whole group
(a replay is dropped whoever replays it), so any member may trim them, and
both are trimmed by commit LSN (``commit_lsn < floor``) through the
destinations' :class:`~walrelay.pipeline.ledger.TrimAware` ``trim_below``:
the delete rides along the next record or batch, at most once a second, as
in ``walrelay run``.

**The rule.** In a worker, an id comes again from three places:

1. *Kafka*: any partition of the group's topics is re-read from the group's
   committed offset (after a rebalance, by another member, or a restart).
   Each commit a worker makes carries a mark in the offset's metadata
   (``walrelay.lsn=<lsn>``): the lowest commit LSN of the records it read at
   or past that offset, or, when it read none, of the last record it read --
   with the relay in ``exactly_once`` mode (one transaction at a time, ids
   increasing) every later record of a partition has a commit LSN at least
   that. The *replay floor* is the lowest mark over the partitions that have
   records past their committed offset; a partition that has records and no
   committed offset (or one without a mark) may be replayed from anywhere, so
   it stops trimming. When no partition has a backlog, the highest mark (new
   records are new events). Read from the cluster like the group's lag
   (:mod:`walrelay.worker.group_lag`), for every partition whoever owns it.
2. *Parking*: parked events are retried below any offset, by any member; the
   oldest parked commit LSN of the worker's destinations -- in the state
   database, whoever parked it, and in the local index -- holds the floor (as
   in ``walrelay run``).
3. *The relay*: in ``at_least_once`` mode it writes an event again after a
   crash (with its old id, as a new record) and may write a partition's
   records slightly out of id order. No offset shows that, so the floor
   applied is the lowest replay floor read over the last
   ``worker.dedup_retention`` (default 10 minutes), starting from a reading
   at least that old: rows are kept at least that long after the whole group
   has committed past them. With the relay in ``exactly_once`` mode, 0 is
   safe.

Pure logic (:func:`replay_floor`, :class:`FloorHold`, :class:`ReadLsns`) is
kept apart from the loop that reads the cluster (:class:`GroupTrim`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from walrelay.dsn import masked_dsn, scrub
from walrelay.model import Lsn, format_lsn, parse_lsn
from walrelay.pipeline.ledger import TrimAware
from walrelay.state.parking import ParkedEventsTable
from walrelay.worker.group_lag import topic_partitions
from walrelay.worker.offsets import Origin, TopicPartition

__all__ = [
    "MARK_PREFIX",
    "FloorHold",
    "GroupParked",
    "GroupTrim",
    "PartitionMark",
    "ReadLsns",
    "commit_mark",
    "parse_mark",
    "read_group_marks",
    "replay_floor",
    "why_no_floor",
]

log = logging.getLogger("walrelay.worker.trim")

READ_INTERVAL = 10.0
"""Seconds between two readings of the group's committed offsets and marks."""

HOLD_READINGS = 4096
"""Readings a :class:`FloorHold` keeps (10 s apart: 11 hours); a longer retention
merges the oldest ones."""

MARK_PREFIX = "walrelay.lsn="

WINDOW_ENTRIES = 2048
"""Commit LSNs kept per partition for the marks. Past it the two oldest merge
(into the later offset with the lower LSN): marks may come out lower than
exact, never higher, and a record stuck at a sink keeps memory bounded."""


def commit_mark(lsn: Lsn) -> str:
    """The metadata committed with an offset: a lower bound of the commit LSNs
    of the partition's records at and past it."""
    return MARK_PREFIX + format_lsn(lsn)


def parse_mark(metadata: str | bytes | None) -> Lsn | None:
    """The LSN of a commit's metadata, or None (no mark: another client's commit)."""
    if isinstance(metadata, bytes):
        metadata = metadata.decode("utf-8", "replace")
    if not metadata or not metadata.startswith(MARK_PREFIX):
        return None
    try:
        return parse_lsn(metadata[len(MARK_PREFIX) :])
    except ValueError:
        return None


class _Window:
    __slots__ = ("epoch", "last", "lsns")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.last: Lsn = 0  # the last record's commit LSN
        # (offset, lsn) in offset order, with increasing lsns: the front is the minimum.
        self.lsns: collections.deque[tuple[int, Lsn]] = collections.deque()


class ReadLsns:
    """Per assigned partition, the commit LSNs of the records read in this
    assignment: the lowest one at or past an offset (a sliding-window minimum;
    the window's start, the safe offset, only moves forward)."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Window] = {}

    def read(self, origin: Origin, lsn: Lsn) -> None:
        """A record of ``origin`` carrying an event of commit LSN ``lsn`` was read."""
        window = self._parts.get(origin.tp)
        if window is None or window.epoch != origin.epoch:
            window = self._parts[origin.tp] = _Window(origin.epoch)
        lsns = window.lsns
        while lsns and lsns[-1][1] >= lsn:
            lsns.pop()
        lsns.append((origin.offset, lsn))
        window.last = lsn
        if len(lsns) > WINDOW_ENTRIES:
            _offset, lowest = lsns.popleft()
            lsns[0] = (lsns[0][0], lowest)

    def mark(self, tp: TopicPartition, offset: int) -> Lsn | None:
        """A lower bound of the commit LSNs of ``tp``'s records at ``offset`` and
        later (None: no record read in this assignment). Forgets what lies below."""
        window = self._parts.get(tp)
        if window is None:
            return None
        lsns = window.lsns
        while lsns and lsns[0][0] < offset:
            lsns.popleft()
        return lsns[0][1] if lsns else window.last

    def retain(self, tps: Iterable[TopicPartition]) -> None:
        """Forget partitions no longer assigned."""
        keep = set(tps)
        for tp in [tp for tp in self._parts if tp not in keep]:
            del self._parts[tp]


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """One partition of the group's topics, as the cluster has it."""

    topic: str
    partition: int
    committed: int | None  # the group's committed offset (None: never committed)
    mark: Lsn | None  # the commit's mark (None: no walrelay mark)
    low: int  # the first offset still in the log
    end: int  # the last stable offset


def replay_floor(parts: Sequence[PartitionMark]) -> Lsn | None:
    """Below this commit LSN no record the group may still re-read carries an
    event (see the module docstring); None when nothing can be trimmed."""
    backlog: list[Lsn] = []
    marks: list[Lsn] = []
    for p in parts:
        if p.mark is not None:
            marks.append(p.mark)
        if p.committed is None:
            if p.end > p.low:
                return None  # read from its first record on: anything may come again
            continue
        if p.committed >= p.end:
            continue  # nothing past the committed offset
        if p.mark is None:
            return None  # its backlog's LSNs are unknown
        backlog.append(p.mark)
    if backlog:
        return min(backlog)
    return max(marks) if marks else None


def why_no_floor(parts: Sequence[PartitionMark]) -> str:
    """Why :func:`replay_floor` found none (for the log)."""
    for p in parts:
        where = f"{p.topic}[{p.partition}]"
        if p.committed is None and p.end > p.low:
            return f"{where} has records and no committed offset (the group may read it all)"
        if p.committed is not None and p.committed < p.end and p.mark is None:
            return (
                f"{where}'s committed offset carries no walrelay LSN mark"
                " (committed by another client or an older walrelay)"
            )
    return "no partition has a committed offset yet"


class FloorHold:
    """Replay floors over time: the lowest one read over the last ``retention``
    seconds, starting from one read at least that long ago (None until then,
    and while a reading in that window found no floor)."""

    def __init__(self, retention: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self._clock = clock
        self._readings: collections.deque[tuple[float, Lsn | None]] = collections.deque()

    def add(self, floor: Lsn | None) -> None:
        readings = self._readings
        if readings and readings[-1][1] == floor:
            return  # the earlier reading of the same floor answers for both
        readings.append((self._clock(), floor))
        if len(readings) > HOLD_READINGS:
            # A long retention: the two oldest merge into the older time and the
            # lower floor (None is lowest), so the floor can only come out lower.
            t, first = readings.popleft()
            second = readings[0][1]
            lower = None if first is None or second is None else min(first, second)
            readings[0] = (t, lower)

    def floor(self) -> Lsn | None:
        readings = self._readings
        cutoff = self._clock() - self.retention
        while len(readings) > 1 and readings[1][0] <= cutoff:
            readings.popleft()
        if not readings or readings[0][0] > cutoff:
            return None
        floors = [f for _t, f in readings]
        if any(f is None for f in floors):
            return None
        return min(f for f in floors if f is not None)


def read_group_marks(
    ck: Any, consumer: Any, topics: list[str], timeout: float
) -> list[PartitionMark]:
    """Every partition of ``topics``: the group's committed offset and its mark,
    and the log's bounds. ``consumer``: a read_committed consumer of the group
    that is not subscribed. Raises ``KafkaException`` when the cluster does not
    answer. Blocking: run it in a thread."""
    tps = topic_partitions(ck, consumer, topics, timeout)
    if not tps:
        return []
    committed: dict[TopicPartition, tuple[int, Lsn | None]] = {}
    for tp in consumer.committed(tps, timeout=timeout):
        if tp.error is not None:
            raise ck.KafkaException(tp.error)
        if tp.offset >= 0:
            committed[(tp.topic, tp.partition)] = (tp.offset, parse_mark(tp.metadata))
    out = []
    for tp in tps:
        low, end = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        offset, mark = committed.get((tp.topic, tp.partition), (None, None))
        out.append(PartitionMark(tp.topic, tp.partition, offset, mark, low, end))
    return out


class GroupParked:
    """The oldest parked event of the worker's destinations in the state
    database, whoever parked it (the local parking index knows only the rows it
    read at its last assignment): one indexed query per reading."""

    def __init__(self, dsn: str, schema: str, destinations: list[str]) -> None:
        self._dsn = dsn
        self._table = ParkedEventsTable(schema)
        self.destinations = destinations
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

    async def oldest(self) -> Lsn | None:
        """Raises ``OSError`` (a clean one-line message) when the database does not answer."""
        try:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name="walrelay-trim", connect_timeout=10
                )
            return await self._table.oldest_commit_lsn(conn, self.destinations)
        except psycopg.Error as e:
            await self.close()
            text = scrub(str(e).strip(), self._dsn)
            raise OSError(f"state database {masked_dsn(self._dsn)}: {text}") from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class GroupTrim:
    """Sets the destinations' trim floor from the group's committed offsets,
    every :data:`READ_INTERVAL` seconds (see the module docstring)."""

    def __init__(
        self,
        *,
        targets: Callable[[], Iterable[TrimAware]],
        oldest_parked: Callable[[], Lsn | None],
        retention: float,
        group_parked: GroupParked | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = targets
        self._oldest_parked = oldest_parked
        self._group_parked = group_parked
        self.hold = FloorHold(retention, clock)
        self.replay_floor: Lsn | None = None  # the last reading's
        self.floor: Lsn | None = None  # the last one handed to the targets
        self.error: str | None = None
        self._blocked: str | None = None  # why the last reading found no floor (logged once)

    def step(self, parts: Sequence[PartitionMark], parked: Lsn | None = None) -> Lsn | None:
        """Take one reading of the group (``parked``: the group's oldest parked
        commit LSN); hand the floor to the targets (and return it)."""
        self.replay_floor = replay_floor(parts)
        self.hold.add(self.replay_floor)
        blocked = None if self.replay_floor is not None else why_no_floor(parts)
        if blocked is not None and blocked != self._blocked:
            log.info("dedup rows are not trimmed for now: %s", blocked)
        self._blocked = blocked
        floor = self.hold.floor()
        for oldest in (self._oldest_parked(), parked):
            if floor is not None and oldest is not None and oldest < floor:
                floor = oldest
        if floor is None:
            return None
        if floor != self.floor:
            log.debug("trim floor %s", format_lsn(floor))
        self.floor = floor
        for target in self._targets():
            target.trim_below(floor)
        return floor

    def status(self) -> dict[str, Any]:
        """For the worker's status: the floor handed to the sinks and why not."""
        return {
            "floor": None if self.floor is None else format_lsn(self.floor),
            "floor_lsn": self.floor,
            "replay_floor": None if self.replay_floor is None else format_lsn(self.replay_floor),
            "retention": self.hold.retention,
            "blocked": self._blocked,
            "error": self.error,
        }

    async def run(
        self, ck: Any, settings: dict[str, Any], topics: list[str], call_timeout: float
    ) -> None:
        """Read the group (a consumer with ``settings`` that never joins it) and
        trim, until cancelled; ``call_timeout`` bounds each call to the cluster.
        A cluster or state database that does not answer trims nothing."""
        reader: Any = None
        try:
            while True:
                try:
                    reader = reader or ck.Consumer(settings)
                    parts = await asyncio.to_thread(
                        read_group_marks, ck, reader, topics, call_timeout
                    )
                    group = self._group_parked
                    parked = None if group is None else await group.oldest()
                except Exception as e:
                    self.error = str(e)
                    log.debug("reading the group's committed offsets failed: %s", e)
                else:
                    self.error = None
                    self.step(parts, parked)
                await asyncio.sleep(READ_INTERVAL)  # a timer, not synchronisation
        finally:
            if reader is not None:
                await asyncio.to_thread(reader.close)
            if self._group_parked is not None:
                await self._group_parked.close()
