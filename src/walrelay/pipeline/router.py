"""The Router: the one entrance every event passes, whatever brought it.

The stream, the initial snapshot and backfills all hand changes (or rows) to
one :class:`Router`. It decides which destinations want an event (per table
and operation), builds the envelope once, applies each destination's own
per-event steps (today the outbox event router), counts the event into the
LSN tracker for that destination and offers it to the destination's buffer.
What did not fit is returned for the caller to await (backpressure).

The stream path is synchronous and counts into a dict that the reading task
flushes to the tracker in bulk (:meth:`flush_counts`) before every await:
telling the tracker per event costs ~2 us. That is safe because a destination
can only finish an event after the reading task yields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from walrelay.config import DestinationConfig
from walrelay.model import Begin, Change, Event, Lsn, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.outbox_router import OutboxRouter
from walrelay.pipeline.scheduler import Destination

Blocked = list[tuple[Destination, Event]]

log = logging.getLogger("walrelay.router")


class Router:
    """Routes, shapes and counts every event of one slot."""

    def __init__(
        self,
        configs: Sequence[DestinationConfig],
        destinations: dict[str, Destination],
        builder: EnvelopeBuilder,
        tracker: LsnTracker,
        *,
        ignore_table: str | None = None,
        table_oids: Mapping[str, int] | None = None,
        renamed: Mapping[int, str] | None = None,
    ) -> None:
        self._configs = {d.name: d for d in configs}
        self.destinations = destinations
        self.builder = builder
        # The envelope, built once per event (a bound method: no wrapper call
        # on the hot path).
        self.build: Callable[[Begin, Change, int], Event] = builder.build
        self.tracker = tracker
        # A table whose rows are never delivered (the heartbeat table).
        self._ignore_table = ignore_table
        self._routes: dict[tuple[str, str], list[Destination]] = {}
        # Tables are followed by OID, not by name: a renamed table keeps its
        # destinations. The configured name of each source table's OID, and
        # the stream's routes cached per (OID, op).
        self._configured_name: dict[int, str] = {
            oid: name for name, oid in (table_oids or {}).items()
        }
        self._stream_routes: dict[tuple[int, str], list[Destination]] = {}
        # OID -> current name of tables renamed since the config named them
        # (found at start, walrelay.source.slot.find_renamed, or in the stream).
        self._renamed: dict[int, str] = dict(renamed or {})
        # Per-destination event steps (walrelay.pipeline.outbox_router), only where configured.
        self._outbox: dict[str, OutboxRouter] = {
            d.name: OutboxRouter(d.router, destination=d.name)
            for d in configs
            if d.router is not None
        }
        self._counts: dict[str, int] = {}
        # Events built and routed (each once, however many destinations take it).
        self.events_in = 0

    # -- which destinations ---------------------------------------------------

    def routes_for(self, table: str, op: str) -> list[Destination]:
        """Destinations that want ``op`` events of ``table`` (cached)."""
        key = (table, op)
        dests = self._routes.get(key)
        if dests is None:
            dests = []
            if table != self._ignore_table or self._ignore_table is None:
                for name, dest in self.destinations.items():
                    dcfg = self._configs[name]
                    if dcfg.ops is not None and op not in dcfg.ops:
                        continue
                    if op != "message" and dcfg.tables is not None and table not in dcfg.tables:
                        continue
                    dests.append(dest)
            self._routes[key] = dests
        return dests

    def routes_of(self, change: Change) -> list[Destination]:
        """Destinations of a decoded change; a TRUNCATE of several tables goes to
        every destination wanting any of them."""
        if change.op == "truncate":
            seen: dict[str, Destination] = {}
            for rel in change.relations:
                for dest in self.routes_for(rel.qualified_name, "truncate"):
                    seen[dest.name] = dest
            return list(seen.values())
        relation = change.relation
        if relation is None:
            dests = self._routes.get(("", change.op))
            return dests if dests is not None else self.routes_for("", change.op)
        dests = self._stream_routes.get((relation.oid, change.op))
        if dests is None:
            dests = self._stream_routes[relation.oid, change.op] = self.routes_for(
                self.configured_name(relation), change.op
            )
        return dests

    def configured_name(self, relation: Relation) -> str:
        """The name the config knows ``relation`` by: the one its OID had when
        walrelay started (a rename is logged once), else its own."""
        name = relation.qualified_name
        configured = self._configured_name.get(relation.oid)
        if configured is None or configured == name:
            return name
        if self._renamed.get(relation.oid) != name:
            self._renamed[relation.oid] = name
            # The key columns configured for the old name hold for the new one.
            cols = self.builder.key_columns_of(configured)
            if cols is not None:
                self.builder.set_key_columns(name, cols)
            log.warning(
                "table %s (OID %d) was renamed to %s: its destinations keep receiving its "
                "changes, with table %s in the events; rename it in the config (source.tables, "
                "destinations[].tables) before the next restart",
                configured,
                relation.oid,
                name,
                name,
            )
        return configured

    def configured_names(self) -> dict[int, str]:
        """Configured table name by OID (what the source watch checks)."""
        return dict(self._configured_name)

    def snapshot_destinations(self, table: str) -> list[Destination]:
        """Destinations that take an initial snapshot of ``table``."""
        out = []
        for name, dest in self.destinations.items():
            dcfg = self._configs[name]
            if dcfg.snapshot != "initial":
                continue
            if dcfg.tables is not None and table not in dcfg.tables:
                continue
            if dcfg.ops is not None and "insert" not in dcfg.ops:
                continue  # a destination not taking inserts does not want rows either
            out.append(dest)
        return out

    # -- building and shaping -------------------------------------------------

    def shape(self, destination: str, event: Event) -> Event | None:
        """The event as ``destination`` receives it; None: not for it."""
        outbox = self._outbox.get(destination)
        if outbox is None:
            return event
        return outbox.route(event)

    def shaped(self, destination: str, events: Iterable[Event]) -> list[Event]:
        if destination not in self._outbox:
            return events if isinstance(events, list) else list(events)
        out = []
        for event in events:
            shaped = self.shape(destination, event)
            if shaped is not None:
                out.append(shaped)
        return out

    # -- the stream: synchronous, counted in bulk -----------------------------

    def dispatch(self, event: Event, dests: Sequence[Destination]) -> Blocked | None:
        """Shape ``event`` per destination, count it, offer it to each buffer.

        Returns the (destination, event) pairs that did not fit, for the caller
        to await; None when all fitted. Call :meth:`flush_counts` before the
        next await.
        """
        self.events_in += 1
        counts = self._counts
        outbox = self._outbox
        blocked: Blocked | None = None
        for dest in dests:
            out = event
            if outbox:
                step = outbox.get(dest.name)
                if step is not None:
                    routed = step.route(event)
                    if routed is None:
                        continue  # not an outbox event (router.other_ops: skip)
                    out = routed
            counts[dest.name] = counts.get(dest.name, 0) + 1
            if not dest.try_put(out):
                if blocked is None:
                    blocked = []
                blocked.append((dest, out))
        return blocked

    def dispatch_shaped(self, pairs: Iterable[tuple[Destination, Event]]) -> Blocked | None:
        """Like :meth:`dispatch` for events already shaped for their destination."""
        counts = self._counts
        blocked: Blocked | None = None
        for dest, event in pairs:
            self.events_in += 1  # a backfill chunk's event goes to one destination
            counts[dest.name] = counts.get(dest.name, 0) + 1
            if not dest.try_put(event):
                if blocked is None:
                    blocked = []
                blocked.append((dest, event))
        return blocked

    def flush_counts(self, commit_lsn: Lsn) -> None:
        """Tell the tracker about the events dispatched since the last flush."""
        counts = self._counts
        if counts:
            self.tracker.add_counts(commit_lsn, counts)
            counts.clear()

    def discard_counts(self) -> None:
        """A reconnect abandoned the transaction: it comes again whole."""
        self._counts.clear()

    # -- snapshots and backfills: whole batches, awaited ----------------------

    async def put_batch(self, commit_lsn: Lsn, dest: Destination, events: list[Event]) -> None:
        """Shape ``events`` for ``dest``, count them, then hand them over in id order."""
        events = self.shaped(dest.name, events)
        if not events:
            return
        self.tracker.add(commit_lsn, len(events), destination=dest.name)
        for event in events:
            if not dest.try_put(event):
                await dest.put(event)
