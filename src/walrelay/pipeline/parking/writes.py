"""The writes parking queues for the state database, and what it reads back.

A destination's parking never writes itself: it queues a :class:`Write` with
:class:`ParkingTable` (:class:`~walrelay.pipeline.parking.store.ParkingStore`),
whose one writer task applies the queue in FIFO order, several writes per
transaction, and calls each write's ``then`` after the commit. So a key's
events reach the table in id order, and completions are applied in the
order they became durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from walrelay.model import Event
from walrelay.pipeline.parking.index import Ident, ParkedRow

__all__ = ["DeleteRow", "ParkRows", "ParkingTable", "ReadRows", "UpdateRow", "Write"]


class Write:
    """A queued write for one destination; ``then(self)`` runs after its commit."""

    __slots__ = ("destination", "then")

    def __init__(self, destination: str, then: Callable[[Self], None]) -> None:
        self.destination = destination
        self.then = then

    def done(self: Self) -> None:
        self.then(self)


class ParkRows(Write):
    """Insert parked events (``params``: one insert row each)."""

    __slots__ = ("diverted", "future", "params", "rows")

    def __init__(
        self,
        destination: str,
        then: Callable[[ParkRows], None],
        rows: list[ParkedRow],
        params: list[tuple[Any, ...]],
        diverted: list[Event],
        future: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(destination, then)
        self.rows = rows
        self.params = params
        self.diverted = diverted  # events to report finished to the destination
        self.future = future  # resolved after the commit (a failed batch waits on it)


class DeleteRow(Write):
    """A parked event was delivered: its row goes."""

    __slots__ = ("row",)

    def __init__(self, destination: str, then: Callable[[DeleteRow], None], row: ParkedRow):
        super().__init__(destination, then)
        self.row = row


class UpdateRow(Write):
    """An attempt's outcome, written only over the revision parking last read;
    ``superseded`` when the row changed meanwhile (``walrelay parking retry``)."""

    __slots__ = ("dead", "params", "permanent", "row", "skipped", "superseded")

    def __init__(
        self,
        destination: str,
        then: Callable[[UpdateRow], None],
        row: ParkedRow,
        *,
        attempts: int,
        error: str | None,
        permanent: bool,
        dead: bool,
        skipped: bool,
        next_at: float,
        attempted_at: float | None,
    ) -> None:
        super().__init__(destination, then)
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
            destination,
            row.ident[0],
            row.ident[1],
            row.revision,
        )


class ReadRows(Write):
    """Re-read the destination's rows (after ``walrelay parking retry|discard``);
    alone in its transaction, so it sees every write queued before it."""

    __slots__ = ("snapshot",)

    def __init__(self, destination: str, then: Callable[[ReadRows], None]) -> None:
        super().__init__(destination, then)
        self.snapshot: list[tuple[Any, ...]] = []


class ParkingTable(Protocol):
    """What one destination's parking needs from the store."""

    def enqueue(self, write: Write) -> None:
        """Queue ``write`` behind every write queued before it."""
        ...

    async def fetch(self, destination: str, idents: list[Ident]) -> dict[Ident, Event]:
        """The parked events ``idents`` as they were parked (missing: discarded).
        Raises ``psycopg.Error`` when the state database cannot be read."""
        ...
