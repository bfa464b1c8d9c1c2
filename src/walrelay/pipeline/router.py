"""The Router: the one entrance every event passes, whatever brought it.

The stream, the initial snapshot and backfills all hand changes (or rows) to
one :class:`Router`. It decides which destinations want an event (per table
and operation), builds the envelope once, applies each destination's own
per-event steps (transforms, the outbox event router, the output format),
counts the event into the LSN tracker for that destination and offers it to
the destination's buffer. What did not fit is returned for the caller to await (backpressure).

A destination's steps are a list of callables, event in, event(s) out, run in
order: its transforms (:mod:`walrelay.pipeline.transforms`), then (where
configured) the outbox router; then, last, the output format
(:mod:`walrelay.pipeline.formats`) renders each event that comes out. With
``transaction_metadata`` the Router also makes each transaction's begin/end
events at the commit (:meth:`Router.end_transaction`). A step returns None
to drop the event -- it then is not counted, so the safe LSN passes it -- or
a list to fan out (streamed changes only: the session reserves the extra
ids, :meth:`Router.take_extra_seqs`).
Destinations without steps take the event as built: no decode, no copy.

A schema change that takes away a column a transform needs
(:class:`~walrelay.pipeline.transforms.SchemaDrift`) stops delivery to that
destination: its later events are counted but never handed over, so the slot
stays behind them until walrelay is restarted with fixed transforms, and
nothing is sent unmasked; other destinations go on.

The stream path is synchronous and counts into a dict that the reading task
flushes to the tracker in bulk (:meth:`flush_counts`) before every await:
telling the tracker per event costs ~2 us. That is safe because a destination
can only finish an event after the reading task yields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from walrelay.config import DestinationConfig, SourceConfig
from walrelay.model import Begin, Change, Event, Lsn, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder, encode_json
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
from walrelay.pipeline.transaction_metadata import TransactionCounts, TransactionOrder
from walrelay.pipeline.transforms import SchemaDrift, TransformChain, build_chains
from walrelay.pipeline.transforms.chain import RESUME_PREFIX

log = logging.getLogger("walrelay.pipeline.router")

Blocked = list[tuple[Destination, Event]]

EventStep = Callable[[Event], "Event | list[Event] | None"]
"""One per-destination step of the Router: an event in; one, several or none out."""


class _Held:
    """What a stopped destination's events become: counted, never handed over."""


_HELD: Final = _Held()
_NOT_RUN: Final = _Held()  # Router._apply's ``first`` when not given


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
        chains: Mapping[str, TransformChain] | None = None,
        source: SourceConfig | None = None,
        table_oids: Mapping[str, int] | None = None,
        renamed: Mapping[int, str] | None = None,
    ) -> None:
        self._configs = {d.name: d for d in configs}
        self.destinations = destinations
        self.builder = builder
        # The envelope, built once per event (a bound method: no wrapper call
        # on the hot path).
        self.build: Callable[[Begin, Change, int], Event] = builder.build
        self._build_inserts = builder.inserts_from_wire
        # Per table OID: (the Relation, the destinations of route_inserts).
        self._plain_inserts: dict[int, tuple[Relation, list[Destination]]] = {}
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
        # Per-destination event steps, only where configured: the transforms
        # (checked against the catalog by the engine), then the outbox router.
        self.chains: dict[str, TransformChain] = dict(
            build_chains(configs) if chains is None else chains
        )
        for built in self.chains.values():
            built.relation = builder.relation  # column types: exact json reading where needed
        self._outbox: dict[str, OutboxRouter] = {
            d.name: OutboxRouter(d.router, destination=d.name)
            for d in configs
            if d.router is not None
        }
        self._steps: dict[str, tuple[EventStep, ...]] = {}
        for d in configs:
            steps: list[EventStep] = []
            chain = self.chains.get(d.name)
            if chain is not None:
                steps.append(chain.apply)
            if d.name in self._outbox:
                steps.append(self._outbox[d.name].route)
            if steps:
                self._steps[d.name] = tuple(steps)
        # Destinations stopped by a schema change: name -> the error.
        self.halted: dict[str, str] = {}
        # Ids a fan out used beyond the change's own (the session skips them).
        self.extra_seqs = 0
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
            self._halt_transforms_of(configured, name)
        return configured

    def _halt_transforms_of(self, configured: str, name: str) -> None:
        """Transforms are scoped by table name: a renamed table's events would
        pass steps written for its old name (an excluded column sent). Its
        destinations with transforms stop, as for a schema change."""
        for dest_name in self.chains:
            dcfg = self._configs.get(dest_name)
            if dcfg is None or (dcfg.tables is not None and configured not in dcfg.tables):
                continue
            self._halt(
                dest_name,
                SchemaDrift(
                    f"destination {dest_name}: table {configured} was renamed to {name} and "
                    "the destination's transforms name tables: delivery to it stops so that "
                    "no step is skipped; rename the table in the config (source.tables, "
                    "destinations[].tables, transforms) and restart"
                ),
            )

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

    def _apply(
        self,
        dest: str,
        event: Event,
        steps: tuple[EventStep, ...],
        *,
        fan_out: bool,
        first: Event | list[Event] | _Held | None = _NOT_RUN,
    ) -> Event | list[Event] | _Held | None:
        """``steps`` on ``event``; ``first``: what the first step (the transform
        chain) already made of it, in a batch (:meth:`shaped`)."""
        out: Event | list[Event] = event
        if first is not _NOT_RUN:
            if first is None:
                return None
            out = first  # type: ignore[assignment]
            steps = steps[1:]
        try:
            for step in steps:
                nxt = _flat([step(e) for e in out]) if isinstance(out, list) else step(out)
                if nxt is None:
                    return None
                out = nxt
        except SchemaDrift as e:
            self._halt(dest, e)
            return _HELD
        if isinstance(out, list):
            if not out:
                return None
            if len(out) == 1:
                return out[0]
            if not fan_out:
                return _stopped(
                    event,
                    f"destination {dest}: a python step returned {len(out)} events for a "
                    f"snapshot or backfill row of {event.table} (event {event.id}); fan out "
                    "works on streamed changes only",
                )
            self.extra_seqs = max(self.extra_seqs, len(out) - 1)
        return out

    def _halt(self, name: str, error: SchemaDrift) -> None:
        if name in self.halted:
            return
        text = str(error)
        self.halted[name] = text
        self._steps[name] = (_hold,)
        dest = self.destinations.get(name)
        if dest is not None:
            dest.last_error = text
        log.error("%s", text)

    def take_extra_seqs(self) -> int:
        """The ids the last change's fan out used beyond its own (then reset)."""
        n = self.extra_seqs
        self.extra_seqs = 0
        return n

    def finish(
        self,
        destination: str,
        event: Event,
        snapshot: str = SNAPSHOT_NONE,
        order: TransactionOrder | None = None,
    ) -> Event:
        """``event`` after ``destination``'s steps: rendered in its output format.

        A failed event (a transform step failed on it) is rendered when its
        retry succeeds (:class:`~walrelay.pipeline.transforms.ResumeHook`)."""
        fmt = self._formats.get(destination)
        if fmt is None or event.failure is not None or event.body.startswith(RESUME_PREFIX):
            return event
        return fmt.render(event, snapshot if event.op == "read" else SNAPSHOT_NONE, order)

    def shape(
        self, destination: str, event: Event, snapshot: str = SNAPSHOT_BACKFILL
    ) -> Event | None:
        """The event as ``destination`` receives it; None: not for it.

        ``snapshot``: what a ``read`` event is (backfill rows come through here,
        initial snapshot rows through :meth:`put_batch`). For a destination
        stopped by a schema change: the event failed, its body only its id, op
        and table (parked, never sent)."""
        steps = self._steps.get(destination)
        out: Event = event
        if steps is not None:
            applied = self._apply(destination, event, steps, fan_out=False)
            if applied is _HELD:
                return _stopped(event, self.halted[destination])
            if applied is None:
                return None
            out = applied  # type: ignore[assignment]
        return self.finish(destination, out, snapshot)

    def shaped(
        self, destination: str, events: Iterable[Event], snapshot: str = SNAPSHOT_BACKFILL
    ) -> list[Event] | _Held:
        steps = self._steps.get(destination)
        if steps is None and destination not in self._formats:
            return events if isinstance(events, list) else list(events)
        out: list[Event] = []
        firsts: list[Event | list[Event] | None] | None = None
        chain = self.chains.get(destination)
        if chain is not None and chain.batched and destination not in self.halted:
            # A batch python step: the chain runs over the whole batch at once.
            events = events if isinstance(events, list) else list(events)
            try:
                firsts = chain.apply_many(events)
            except SchemaDrift as e:
                self._halt(destination, e)
                return _HELD
        for i, event in enumerate(events):
            shaped: Event | list[Event] | _Held | None = event
            if steps is not None:
                first = _NOT_RUN if firsts is None else firsts[i]
                shaped = self._apply(destination, event, steps, fan_out=False, first=first)
                if shaped is _HELD:
                    return _HELD
            if shaped is not None:
                out.append(self.finish(destination, shaped, snapshot))  # type: ignore[arg-type]
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
        shapers = self._steps
        formats = self._formats
        tx = self._tx
        blocked: Blocked | None = None
        for dest in dests:
            out = event
            if shapers:
                steps = shapers.get(dest.name)
                if steps is not None:
                    shaped = self._apply(dest.name, event, steps, fan_out=True)
                    if shaped is None:
                        continue  # dropped (filter, python hook, outbox other_ops: skip)
                    if not isinstance(shaped, Event):
                        blocked = self._put_many(dest, shaped, blocked)
                        continue
                    out = shaped
                    if out.failure is not None:
                        dest.may_fail = True
            if formats or tx:
                out = self._render_streamed(dest.name, out)
            counts[dest.name] = counts.get(dest.name, 0) + 1
            if not dest.try_put(out):
                if blocked is None:
                    blocked = []
                blocked.append((dest, out))
        return blocked

    def route_inserts(
        self, begin: Begin, relation: Relation, frames: list[bytes], start: int, seq: int
    ) -> tuple[int, Blocked | None]:
        """:meth:`dispatch` of the run of streamed Inserts into ``relation`` from
        ``frames[start]`` straight from their messages, when every destination
        of the table takes the event as built (no transform, outbox router,
        output format or transaction metadata): one call for the run instead
        of decode, build and dispatch per change.

        Returns how many frames it routed (0: decode ``frames[start]`` and
        route it as usual) and, as :meth:`dispatch`, what did not fit. As on the
        per-change path, the run stops at the first event a buffer refuses: the
        reader awaits room for it before it takes the next frame, so a full
        buffer (or a paused destination) holds the reader at that event.
        """
        cached = self._plain_inserts.get(relation.oid)
        if cached is None or cached[0] is not relation:
            cached = self._plain_inserts[relation.oid] = (relation, self._plain_routes(relation))
        dests = cached[1]
        if not dests:
            return 0, None
        events = self._build_inserts(begin, relation, frames, start, seq)
        n = len(events)
        if not n:
            return 0, None
        counts = self._counts
        if len(dests) == 1:
            dest = dests[0]
            try_put = dest.try_put
            for i, event in enumerate(events):
                if not try_put(event):
                    n = i + 1
                    self.events_in += n
                    counts[dest.name] = counts.get(dest.name, 0) + n
                    return n, [(dest, event)]
            self.events_in += n
            counts[dest.name] = counts.get(dest.name, 0) + n
            return n, None
        for i, event in enumerate(events):
            blocked: Blocked | None = None
            for dest in dests:
                if not dest.try_put(event):
                    if blocked is None:
                        blocked = []
                    blocked.append((dest, event))
            if blocked is not None:
                n = i + 1
                break
        else:
            blocked = None
        self.events_in += n
        for dest in dests:
            counts[dest.name] = counts.get(dest.name, 0) + n
        return n, blocked

    def _plain_routes(self, relation: Relation) -> list[Destination]:
        """The destinations of ``relation``'s inserts if they all take the event
        as built; else none (:meth:`route_inserts`)."""
        dests = self._stream_routes.get((relation.oid, "insert"))
        if dests is None:
            dests = self._stream_routes[relation.oid, "insert"] = self.routes_for(
                self.configured_name(relation), "insert"
            )
        for dest in dests:
            name = dest.name
            if name in self._steps or name in self._formats or name in self._tx:
                return []
        return dests

    def _put_many(
        self, dest: Destination, events: list[Event] | _Held, blocked: Blocked | None
    ) -> Blocked | None:
        """A fan out's events, or a stopped destination's event (counted only)."""
        counts = self._counts
        if events is _HELD:
            counts[dest.name] = counts.get(dest.name, 0) + 1
            return blocked
        assert isinstance(events, list)
        counts[dest.name] = counts.get(dest.name, 0) + len(events)
        for out in events:
            if self._formats or self._tx:
                out = self._render_streamed(dest.name, out)
            if out.failure is not None:
                dest.may_fail = True
            if not dest.try_put(out):
                if blocked is None:
                    blocked = []
                blocked.append((dest, out))
        return blocked

    def _render_streamed(self, name: str, event: Event) -> Event:
        """A streamed event counted for its transaction's metadata, then rendered."""
        counter = self._tx.get(name)
        order = None if counter is None else counter.count(event)
        if name not in self._formats:
            return event
        return self.finish(name, event, SNAPSHOT_NONE, order)

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
            if event.failure is not None:
                dest.may_fail = True
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
            for event in counter.close(commit_lsn, seq):
                out = self.finish(name, event)
                counts[name] = counts.get(name, 0) + 1
                if not dest.try_put(out):
                    if blocked is None:
                        blocked = []
                    blocked.append((dest, out))
        return blocked

    def take_counts(self) -> dict[str, int]:
        """The counts since the last flush, for a caller that tracks them itself
        (a Kafka worker counts per record offset, not per LSN)."""
        counts = self._counts
        self._counts = {}
        return counts

    # -- snapshots and backfills: whole batches, awaited ----------------------

    async def put_batch(self, commit_lsn: Lsn, dest: Destination, events: list[Event]) -> None:
        """Shape ``events`` for ``dest``, count them, then hand them over in id order.

        A destination stopped by a schema change gets them counted only (the
        slot stays behind them)."""
        shaped = self.shaped(dest.name, events, SNAPSHOT_INITIAL)
        if shaped is _HELD:
            self.tracker.add(commit_lsn, len(events), destination=dest.name)
            return
        assert isinstance(shaped, list)
        if not shaped:
            return
        self.tracker.add(commit_lsn, len(shaped), destination=dest.name)
        for event in shaped:
            if event.failure is not None:
                dest.may_fail = True
            if not dest.try_put(event):
                await dest.put(event)


def _flat(results: list[Event | list[Event] | None]) -> list[Event]:
    out: list[Event] = []
    for r in results:
        if r is None:
            continue
        if isinstance(r, list):
            out.extend(r)
        else:
            out.append(r)
    return out


def _hold(event: Event) -> Event:
    raise SchemaDrift("destination stopped")  # replaced by the stored error


def _stopped(event: Event, error: str) -> Event:
    """A stopped destination's snapshot or backfill row: parked, never sent."""
    env = {"id": event.id, "op": event.op, "table": event.table}
    marker = b'{"step":-1,"topic":null,"keys":null,"flat":null}'
    body = RESUME_PREFIX + marker + b',"envelope":' + encode_json(env) + b"}"
    return Event(
        event.commit_lsn,
        event.seq,
        event.op,
        event.table,
        event.keys,
        body,
        event.xid,
        event.committed_at,
        None,
        None,
        error,
    )
