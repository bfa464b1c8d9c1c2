"""The Router: the one entrance every event passes, whatever brought it.

The stream, the initial snapshot and backfills all hand changes (or rows) to
one :class:`Router`. It decides which destinations want an event (per table
and operation), builds the envelope once, applies each destination's own
per-event steps (the outbox event router, then, last, the output format:
walrelay.pipeline.formats), counts the event into the LSN tracker for that
destination and offers it to the destination's buffer. With
``transaction_metadata`` it also makes each transaction's begin/end events at
the commit (:meth:`Router.end_transaction`).
What did not fit is returned for the caller to await (backpressure).

The stream path is synchronous and counts into a dict that the reading task
flushes to the tracker in bulk (:meth:`flush_counts`) before every await:
telling the tracker per event costs ~2 us. That is safe because a destination
can only finish an event after the reading task yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from walrelay.config import DestinationConfig, SourceConfig
from walrelay.model import Begin, Change, Event, Lsn
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.formats import (
    SNAPSHOT_BACKFILL,
    SNAPSHOT_INITIAL,
    SNAPSHOT_NONE,
    Formatter,
    build_formatters,
)
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.outbox_router import OutboxRouter
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.transaction_metadata import TransactionCounts

Blocked = list[tuple[Destination, Event]]


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
        source: SourceConfig | None = None,
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
        # Per-destination event steps (walrelay.pipeline.outbox_router), only where configured.
        self._outbox: dict[str, OutboxRouter] = {
            d.name: OutboxRouter(d.router, destination=d.name)
            for d in configs
            if d.router is not None
        }
        # The output format, the last per-destination step (walrelay.pipeline.formats):
        # only destinations whose format is not walrelay's envelope have one.
        self._formats: dict[str, Formatter] = build_formatters(configs, builder.relation, source)
        # Destinations that get begin/end events (walrelay.pipeline.transaction_metadata).
        self._tx: dict[str, TransactionCounts] = {
            d.name: TransactionCounts() for d in configs if d.transaction_metadata
        }
        self.has_transaction_metadata = bool(self._tx)
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
        table = relation.qualified_name if relation is not None else ""
        dests = self._routes.get((table, change.op))
        return dests if dests is not None else self.routes_for(table, change.op)

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

    def shape(
        self, destination: str, event: Event, snapshot: str = SNAPSHOT_BACKFILL
    ) -> Event | None:
        """The event as ``destination`` receives it; None: not for it.

        ``snapshot``: what a ``read`` event is (backfill rows come through here,
        initial snapshot rows through :meth:`put_batch`)."""
        outbox = self._outbox.get(destination)
        if outbox is not None:
            routed = outbox.route(event)
            if routed is None:
                return None
            event = routed
        fmt = self._formats.get(destination)
        if fmt is not None:
            event = fmt.render(event, snapshot if event.op == "read" else SNAPSHOT_NONE)
        return event

    def shaped(
        self, destination: str, events: Iterable[Event], snapshot: str = SNAPSHOT_BACKFILL
    ) -> list[Event]:
        if destination not in self._outbox and destination not in self._formats:
            return events if isinstance(events, list) else list(events)
        out = []
        for event in events:
            shaped = self.shape(destination, event, snapshot)
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
        formats = self._formats
        tx = self._tx
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
            if formats or tx:
                counter = tx.get(dest.name)
                order = None if counter is None else counter.count(out)
                fmt = formats.get(dest.name)
                if fmt is not None:
                    out = fmt.render(out, SNAPSHOT_NONE, order)
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
        tx = self._tx
        for dest, event in pairs:
            self.events_in += 1  # a backfill chunk's event goes to one destination
            if tx:
                counter = tx.get(dest.name)
                if counter is not None:
                    counter.count(event)
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
        # Transaction metadata counts stay: a resumed transaction does not route
        # its events before the drop again (engine/session.py), so they still count.

    def end_transaction(self, commit_lsn: Lsn, seq: int) -> Blocked | None:
        """At a commit: each transaction-metadata destination's begin and end
        events (ids ``seq`` and ``seq + 1``), shaped, counted and offered like
        :meth:`dispatch`; call :meth:`flush_counts` before the next await."""
        blocked: Blocked | None = None
        counts = self._counts
        for name, counter in self._tx.items():
            dest = self.destinations.get(name)
            if dest is None:
                continue
            fmt = self._formats.get(name)
            for event in counter.close(commit_lsn, seq):
                out = event if fmt is None else fmt.render(event, SNAPSHOT_NONE)
                counts[name] = counts.get(name, 0) + 1
                if not dest.try_put(out):
                    if blocked is None:
                        blocked = []
                    blocked.append((dest, out))
        return blocked

    # -- snapshots and backfills: whole batches, awaited ----------------------

    async def put_batch(self, commit_lsn: Lsn, dest: Destination, events: list[Event]) -> None:
        """Shape ``events`` for ``dest``, count them, then hand them over in id order."""
        events = self.shaped(dest.name, events, SNAPSHOT_INITIAL)
        if not events:
            return
        self.tracker.add(commit_lsn, len(events), destination=dest.name)
        for event in events:
            if not dest.try_put(event):
                await dest.put(event)
