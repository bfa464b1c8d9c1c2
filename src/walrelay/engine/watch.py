"""The source watch: what can change under a running engine, never silent.

pgoutput says nothing when a published table is dropped or removed from the
publication, and a walsender killed by a slot invalidation is not noticed
while backpressure keeps the engine off the socket. So every
``source.watch_interval`` the :class:`SourceWatch` looks at the slot, the
publication and the followed tables (by OID: a rename is not a loss) and

* a table dropped or removed from the publication: logs what happens next
  (its destinations get no more of its changes; the others go on), raises a
  page-level alert, and clears it when the table is published again;
* the slot dropped or invalidated, the publication dropped: hands the error
  to the engine (``on_fatal``), which alerts and acts on ``on_slot_lost``.

:meth:`SourceWatch.judge` is the pure part: one look in, what changed out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from walrelay.errors import PublicationLost, SlotLost, WalrelayError
from walrelay.monitor.thresholds import Severity
from walrelay.source.slot import SourceState, read_source_state
from walrelay.sqltext import ident, literal, qualified

__all__ = ["SourceWatch", "TableEvent", "publication_lost", "slot_dropped", "slot_invalidated"]

log = logging.getLogger("walrelay.engine.watch")

Alert = Callable[[str, str, Severity, str, "str | None"], None]


def slot_dropped(slot: str) -> SlotLost:
    return SlotLost(
        f"replication slot {slot} was dropped while walrelay was streaming from it",
        fix="start walrelay again to create a new slot and snapshot the tables "
        "(or set source.on_slot_lost: resnapshot); changes made meanwhile were not captured",
    )


def slot_invalidated(slot: str, detail: str = "") -> SlotLost:
    why = f" ({detail})" if detail else " (wal_status 'lost': max_slot_wal_keep_size exceeded)"
    return SlotLost(
        f"replication slot {slot} was invalidated: the WAL it still needed was removed{why}",
        fix=f"SELECT pg_drop_replication_slot({literal(slot)}); then start again with a new "
        "snapshot (or set source.on_slot_lost: resnapshot), and raise max_slot_wal_keep_size",
    )


def publication_lost(
    publication: str, slot: str, tables: list[str], server: str = ""
) -> PublicationLost:
    said = f" (server: {server})" if server else ""
    return PublicationLost(
        f"publication {publication} was dropped while walrelay streamed slot {slot}{said}: "
        "the slot cannot decode past the drop",
        fix=f"CREATE PUBLICATION {ident(publication)} FOR TABLE "
        f"{', '.join(qualified(t) for t in tables)}; SELECT pg_drop_replication_slot("
        f"{literal(slot)}); then start walrelay again (it takes a new snapshot; changes made "
        "meanwhile were not captured)",
    )


@dataclass(frozen=True)
class TableEvent:
    """A followed table that stopped (or started again) reaching its destinations."""

    oid: int
    table: str  # its configured name
    kind: str  # "dropped", "unpublished", "republished"


@dataclass
class _Seen:
    dropped: set[int] = field(default_factory=set)
    unpublished: set[int] = field(default_factory=set)


class SourceWatch:
    """Polls the source for dropped tables, publications and slots (module docstring)."""

    def __init__(
        self,
        *,
        dsn: str,
        slot: str,
        publication: str,
        tables: Callable[[], dict[int, str]],
        destinations_of: Callable[[str], list[str]],
        alert: Alert,
        on_fatal: Callable[[WalrelayError], None],
        interval: float,
    ) -> None:
        self._dsn = dsn
        self.slot = slot
        self.publication = publication
        self._tables = tables
        self._destinations_of = destinations_of
        self._alert = alert
        self._on_fatal = on_fatal
        self.interval = interval
        self._seen = _Seen()

    def judge(self, state: SourceState) -> tuple[WalrelayError | None, list[TableEvent]]:
        """What changed since the last look: a fatal error, and table events."""
        tables = self._tables()
        if not state.slot_exists:
            return slot_dropped(self.slot), []
        if state.wal_status == "lost":
            return slot_invalidated(self.slot), []
        if not state.publication_exists:
            return publication_lost(self.publication, self.slot, sorted(tables.values())), []
        events: list[TableEvent] = []
        seen = self._seen
        for oid, name in tables.items():
            if oid not in state.names:
                if oid not in seen.dropped:
                    seen.dropped.add(oid)
                    events.append(TableEvent(oid, name, "dropped"))
                continue
            if oid not in state.published:
                if oid not in seen.unpublished:
                    seen.unpublished.add(oid)
                    events.append(TableEvent(oid, name, "unpublished"))
            elif oid in seen.unpublished:
                seen.unpublished.discard(oid)
                events.append(TableEvent(oid, name, "republished"))
        return None, events

    def report(self, event: TableEvent, current_name: str | None) -> None:
        """The log line and the alert of one table event."""
        dests = ", ".join(self._destinations_of(event.table)) or "none"
        obj = f"table {event.table}"
        if event.kind == "dropped":
            message = (
                f"table {event.table} (OID {event.oid}) was dropped from the source: its "
                f"destinations ({dests}) get no more of its changes; streaming goes on "
                "for the other tables"
            )
            fix = f"remove {event.table} from source.tables and destinations[].tables"
            log.critical("PAGE: %s -- fix: %s", message, fix)
            self._alert("table_dropped", obj, Severity.PAGE, message, fix)
            return
        name = current_name or event.table
        if event.kind == "unpublished":
            message = (
                f"table {name} was removed from publication {self.publication}: its changes "
                f"are no longer captured for its destinations ({dests}); streaming goes on for "
                "the other tables"
            )
            fix = (
                f"ALTER PUBLICATION {ident(self.publication)} ADD TABLE {qualified(name)}; "
                f"then backfill it (walrelay backfill {event.table}) for the changes missed"
            )
            log.critical("PAGE: %s -- fix: %s", message, fix)
            self._alert("table_unpublished", obj, Severity.PAGE, message, fix)
            return
        log.warning(
            "table %s is in publication %s again: its changes are captured again (changes "
            "made while it was out were not: backfill it)",
            name,
            self.publication,
        )
        self._alert("table_unpublished", obj, Severity.OK, "published again", None)

    async def check(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        tables = self._tables()
        state = await read_source_state(
            conn, slot=self.slot, publication=self.publication, oids=sorted(tables)
        )
        fatal, events = self.judge(state)
        for event in events:
            self.report(event, state.names.get(event.oid))
        if fatal is not None:
            self._on_fatal(fatal)

    async def run(self) -> None:
        """Look every ``interval`` until cancelled; a failed look is retried."""
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        failures = 0
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._dsn, autocommit=True, application_name="walrelay-watch"
                        )
                    await self.check(conn)
                    failures = 0
                except psycopg.Error as e:
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        log.warning(
                            "source watch: cannot read slot %s and publication %s: %s",
                            self.slot,
                            self.publication,
                            " ".join(str(e).split()),
                        )
                    if conn is not None:
                        await conn.close()
                        conn = None
        finally:
            if conn is not None:
                await conn.close()
