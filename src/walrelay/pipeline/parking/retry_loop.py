"""Re-delivery of one destination's parked events, per key in order, when due.

One task per destination takes the due heads from the
:class:`~walrelay.pipeline.parking.index.ParkingIndex` (per key only the
oldest parked event; a barrier only when it is the oldest of all), reserves
in-flight slots from the destination (parked and live events share its
``max_in_flight``), reads the events back from the state database and
delivers them through the destination's sink. What an attempt comes to is
reported to :class:`AttemptOutcomes`, which writes it; the slot stays taken
until that write is durable (:meth:`ParkedRetryLoop.release_slot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import psycopg

from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.parking.host import ParkingHost
from walrelay.pipeline.parking.index import ParkedRow, ParkingIndex
from walrelay.pipeline.parking.writes import ParkingTable

__all__ = ["AttemptOutcomes", "ParkedRetryLoop"]

log = logging.getLogger("walrelay.parking")


class AttemptOutcomes(Protocol):
    """Where the loop reports each attempt (the destination's parking)."""

    def delivered(self, row: ParkedRow) -> None: ...

    def failed(self, row: ParkedRow, error: BaseException) -> None: ...

    def missing(self, row: ParkedRow) -> None:
        """``row`` was discarded from the table before it could be read."""
        ...


class ParkedRetryLoop:
    """The retry task of one destination's parked events."""

    def __init__(
        self,
        name: str,
        index: ParkingIndex,
        table: ParkingTable,
        host: ParkingHost,
        outcomes: AttemptOutcomes,
        *,
        max_in_flight: int,
        unreadable_delay: float = 5.0,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self._index = index
        self._table = table
        self._host = host
        self._outcomes = outcomes
        self._unreadable_delay = unreadable_delay  # before trying again after a read error
        self._wake = asyncio.Event()
        self.busy = 0  # rows being tried or their outcome being written
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for due rows again (a slot or a row may have become free).

        The destination calls this after every finished batch; with nothing
        queued a pass would find nothing, so it is skipped (a row queued later
        wakes the loop itself)."""
        if self._index.queued:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"walrelay-parking-{self.name}"
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

    def release_slot(self, row: ParkedRow) -> None:
        """``row``'s attempt is over and its outcome written: free its slot."""
        row.busy = False
        self.busy -= 1
        self._host.release(1)
        self._wake.set()

    async def _run(self) -> None:
        index = self._index
        wake = self._wake
        while True:
            wake.clear()
            due = index.take_due(time.time(), self.max_in_flight - self.busy)
            timeout: float | None = None
            if due:
                granted = self._host.reserve(len(due))
                for row in due[granted:]:
                    index.consider(row)  # no slot now: a finished delivery wakes us
                batch = due[:granted]
                if batch:
                    for row in batch:
                        row.busy = True
                    self.busy += len(batch)
                    task = asyncio.get_running_loop().create_task(self._attempt(batch))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)
                    continue
            elif self.busy < self.max_in_flight:
                next_at = index.next_due_at()
                if next_at is not None:
                    timeout = max(0.0, next_at - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    async def _attempt(self, rows: list[ParkedRow]) -> None:
        try:
            events = await self._table.fetch(self.name, [r.ident for r in rows])
        except psycopg.Error as e:
            log.warning(
                "destination %s: cannot read parked events from the state database (%s); retrying",
                self.name,
                str(e).strip(),
            )
            next_at = time.time() + self._unreadable_delay
            for row in rows:
                row.next_at = max(row.next_at, next_at)
                self.release_slot(row)
                self._index.consider(row)
            return
        await asyncio.gather(*(self._attempt_one(row, events.get(row.ident)) for row in rows))

    async def _attempt_one(self, row: ParkedRow, event: Event | None) -> None:
        if event is None:  # discarded from the table meanwhile
            self._outcomes.missing(row)
            return
        try:
            await self._host.deliver_parked([event])
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
            self._outcomes.delivered(row)
            return
        self._outcomes.failed(row, error)
