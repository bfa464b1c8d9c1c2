"""The parked-events table of one state database, for all destinations.

:class:`ParkingStore` owns the connections to the state database and uses
the table ``<state schema>.parked_events`` through its statements
(:class:`walrelay.state.parking.ParkedEventsTable`): it creates or upgrades
the schema, loads every destination's rows before replication starts,
applies the queued :mod:`writes <walrelay.pipeline.parking.writes>` through
one writer task (FIFO, batched into one transaction: parking many events
costs one commit), reads parked events back for the retry loops, and
follows the operators' changes (:mod:`walrelay.pipeline.parking.listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from walrelay.config import ParkingConfig, masked_dsn
from walrelay.dsn import scrub
from walrelay.errors import SourceSetupError
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.parking.destination import DestinationParking
from walrelay.pipeline.parking.host import ParkingHost
from walrelay.pipeline.parking.index import Ident
from walrelay.pipeline.parking.listen import follow_operator_changes
from walrelay.pipeline.parking.writes import DeleteRow, ParkRows, ReadRows, UpdateRow, Write
from walrelay.state import parking as T
from walrelay.state.durability import require_flushed_commits
from walrelay.state.migrations import migrate

__all__ = ["ParkingStore"]

log = logging.getLogger("walrelay.parking")

_WRITE_BATCH = 2000
_DbConn = psycopg.AsyncConnection[tuple[Any, ...]]


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
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, application_name=self._name, connect_timeout=10
            )
            try:
                await require_flushed_commits(conn)  # the slot is confirmed past parked events
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return conn

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class ParkingStore:
    """Parked events of every destination, in one state database."""

    def __init__(self, dsn: str, schema: str = "walrelay") -> None:
        self._dsn = dsn
        self.schema = schema
        self.destinations: dict[str, DestinationParking] = {}
        self._writer = _Connection(dsn, "walrelay-parking")
        self._reader = _Connection(dsn, "walrelay-parking-read")
        self._writes: deque[Write] = deque()
        self._writes_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._table = T.ParkedEventsTable(schema)

    def __repr__(self) -> str:
        return f"ParkingStore({masked_dsn(self._dsn)!r}, schema={self.schema!r})"

    @property
    def paused(self) -> bool:
        """True while any destination is at its cap (replication paused)."""
        return any(d.paused for d in self.destinations.values())

    def parking_for(
        self, name: str, config: ParkingConfig, *, max_in_flight: int = 32
    ) -> Callable[[ParkingHost], DestinationParking]:
        """Makes destination ``name``'s parking once the destination exists (it
        is the host: ``Destination(..., parking=store.parking_for(...))``)."""

        def make(host: ParkingHost) -> DestinationParking:
            parking = DestinationParking(self, name, config, host, max_in_flight=max_in_flight)
            self.destinations[name] = parking
            return parking

        return make

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or upgrade the state schema."""
        try:
            conn = await self._writer.get()
            await migrate(conn, self.schema)
        except psycopg.OperationalError as e:
            await self._writer.reset()
            raise SourceSetupError(
                f"cannot connect to the state database ({masked_dsn(self._dsn)}):"
                f" {scrub(str(e), self._dsn)}",
                fix="check state.dsn (default: source.dsn) and the server",
            ) from None

    async def load(self) -> None:
        """Read every destination's parked events (before replication starts)."""
        conn = await self._writer.get()
        for dest in self.destinations.values():
            rows = await self._table.index_rows(conn, dest.name)
            dest.apply_rows(rows, initial=True)
            if dest.config.on_dead == "skip_dead":
                await self._skip_dead(conn, dest)
            if rows:
                stats = dest.stats()
                log.warning(
                    "destination %s: %d parked and %d dead event(s) in %s.parked_events;"
                    " retrying them in key order",
                    dest.name,
                    stats["parked"],
                    stats["dead"],
                    self.schema,
                )
        for name, n in await self._table.unconfigured(conn, list(self.destinations)):
            log.warning(
                "%d parked event(s) of destination %r, which is not configured, stay in"
                " %s.parked_events (see `walrelay parking list`)",
                n,
                name,
                self.schema,
            )

    async def _skip_dead(self, conn: _DbConn, dest: DestinationParking) -> None:
        rows = dest.dead_to_skip()
        if not rows:
            return
        await self._table.skip_dead(conn, dest.name)
        dest.skip(rows)
        log.warning(
            "destination %s: %d dead event(s) skipped (on_dead: skip_dead)", dest.name, len(rows)
        )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._write_loop(), name="walrelay-parking-writer"))
        self._tasks.append(loop.create_task(self._listen_loop(), name="walrelay-parking-listen"))
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

    # -- the writer (ParkingTable) --------------------------------------------------------

    def enqueue(self, write: Write) -> None:
        self._writes.append(write)
        self._writes_wake.set()

    def _next_batch(self) -> list[Write]:
        writes = self._writes
        if isinstance(writes[0], ReadRows):
            return [writes[0]]
        batch: list[Write] = []
        for write in writes:
            if isinstance(write, ReadRows) or len(batch) >= _WRITE_BATCH:
                break
            batch.append(write)
        return batch

    async def _write_loop(self) -> None:
        backoff = Backoff(initial=0.1, multiplier=2.0, maximum=10.0)
        while True:
            if not self._writes:
                self._writes_wake.clear()
                await self._writes_wake.wait()
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
                            "parking: cannot write to %s.parked_events (%s);"
                            " retrying in %.1fs (attempt %d); parked events wait in memory",
                            self.schema,
                            str(e).strip() or type(e).__name__,
                            delay,
                            attempt,
                        )
                    await self._writer.reset()
                    await asyncio.sleep(delay)
            for _ in batch:
                self._writes.popleft()
            for write in batch:
                try:
                    write.done()
                except Exception:
                    log.exception("parking: completing a write failed")

    async def _apply(self, conn: _DbConn, batch: list[Write]) -> None:
        if len(batch) == 1 and isinstance(batch[0], ReadRows):
            read = batch[0]
            read.snapshot = await self._table.index_rows(conn, read.destination)
            return
        inserts: list[tuple[Any, ...]] = []
        deletes: list[T.RowId] = []
        updates: list[UpdateRow] = []
        for write in batch:
            if isinstance(write, ParkRows):
                inserts.extend(write.params)
            elif isinstance(write, DeleteRow):
                deletes.append((write.destination, write.row.ident[0], write.row.ident[1]))
            elif isinstance(write, UpdateRow):
                updates.append(write)
        async with conn.transaction(), conn.cursor() as cur:
            if inserts:
                await self._table.park(cur, inserts)
            if deletes:
                await self._table.delete(cur, deletes)
            for update in updates:  # one by one: each needs its row count
                update.superseded = not await self._table.update(cur, update.params)

    # -- reads (ParkingTable) ---------------------------------------------------------------

    async def fetch(self, destination: str, idents: list[Ident]) -> dict[Ident, Event]:
        reader = self._reader
        async with reader.lock:
            try:
                conn = await reader.get()
                return await self._table.events(conn, destination, idents)
            except psycopg.Error:
                await reader.reset()
                raise

    # -- changes made by `walrelay parking` ---------------------------------------------------

    def reconcile(self) -> None:
        """Re-read every destination's rows (queued behind pending writes)."""
        for dest in self.destinations.values():
            dest.reread()

    async def _listen_loop(self) -> None:
        await follow_operator_changes(self._dsn, self.schema, self.reconcile)
