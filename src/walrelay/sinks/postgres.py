"""PostgreSQL sink: apply changes to tables of another database, exactly once.

Config::

    sink:
      type: postgres
      dsn: postgresql://app@target/db
      schema: replica              # target schema for tables not in `tables`
      tables: {public.orders: orders_copy, public.items: archive.items}
      ordered: true                # default; false = per-key parallel
      max_connections: 4           # connections when ordered is false
      batch_size: 500

What a batch does, in **one target transaction**:

1. ``insert into <state_schema>.applied_events (destination, event_id, ...)``
   -- the batch's ids, claimed;
2. the events' statements, in order, pipelined: ``insert`` / ``update``
   become an upsert on the target's primary key (a run of upserts into one
   table that touch distinct rows is one statement over a JSON array of
   their envelopes' records), ``delete`` deletes by key, an ``update`` that changed
   the key first moves the old row to the new key (an ``UPDATE``, so columns
   the event does not carry -- a TOASTed value the server did not resend, a
   target-only column -- keep their values), ``truncate`` truncates the mapped
   target tables (``restart identity`` when the source asked for it);
   logical messages are only recorded;
3. ``COMMIT``.

``BEGIN``, steps 1 and 2 and ``COMMIT`` go in one pipeline: one round trip
per batch. A replayed batch (some ids already recorded: a replay after a
crash, a retried batch whose COMMIT answer was lost) fails that claim on the
key of ``applied_events``, the transaction rolls back, and the batch is applied
again with a claim that returns the new ids (``on conflict do nothing returning
event_id``): only those events' statements run, the others are skipped.

Because the ids are recorded in the transaction that applies the changes,
a change is applied and recorded, or neither: a replay after a crash, a
retried batch whose COMMIT answer was lost, a re-delivered parked event --
none can apply a change twice. No ledger is needed (``transactional =
True``).

Target table: an event routed by the destination's ``route`` transform goes
to the table its route names (``schema.table``, split at the first dot, or a
bare ``table`` in ``schema``/the source's schema); other events to their
table's ``tables`` mapping (default: the same name). Names are quoted as
identifiers, never spliced into SQL.

Column values come from the event envelope and are cast by PostgreSQL
itself through ``jsonb_populate_record(null::<target>, <record>)`` (the
envelope's ``record``, or ``old`` for a delete's key): every column gets
its value by the target column's own input function (numeric strings,
``\\x`` bytea, ISO timestamps and intervals, JSON arrays into arrays, JSON
into json/jsonb), so the target's types decide.
Source columns missing in the target are ignored (logged once); generated
target columns are never written; TOASTed values the server did not resend
are left as they are (an upsert only sets the columns it got).

Order: with ``ordered: true`` (the default) one batch is in flight and the
target sees changes in exact source commit order -- foreign keys between
target tables hold, a reader never sees a change without every earlier one.
A batch may end inside a source transaction, so a reader can see part of
one. ``ordered: false`` applies batches of disjoint keys in parallel on up to
``max_connections`` connections: faster on a remote target, per-key order
still holds, but changes to different keys (and tables) can commit in any
order, so foreign keys across tables can fail transiently (retried).

Errors: a lost connection is :class:`~walrelay.errors.SinkUnavailable`.
When a batch fails for its data, the events are applied one transaction
each, in order (applied ones are recorded, so the retry skips them): with
``ordered: true`` up to the first bad one, with ``ordered: false`` all of
them. A bad event fails with :class:`~walrelay.errors.PoisonEvent` for data
and constraint errors (SQLSTATE classes 22, 23 except foreign keys), a
retryable :class:`~walrelay.errors.SinkError` otherwise (a missing target
table or column, a deadlock: fix the target and it goes on); several bad
events make one error by the policy of :mod:`walrelay.sinks.base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from walrelay import exact_json, failpoints
from walrelay.config import masked_dsn
from walrelay.errors import PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event, Lsn, format_event_id, format_lsn
from walrelay.sinks.base import SinkContext
from walrelay.sinks.common import batch_error
from walrelay.state.durability import require_flushed_commits

if TYPE_CHECKING:
    from walrelay.config import PostgresSinkConfig

__all__ = ["PostgresSink"]

log = logging.getLogger("walrelay.sinks.postgres")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

TRIM_INTERVAL = 1.0  # seconds between deletions of old applied-event records

# A query, its parameters, and -- for an upsert, which takes a JSON array of
# records -- the target key of its row: consecutive upserts of distinct rows go
# as one statement (one upsert may not touch a row twice).
_Statement = tuple[bytes, tuple[Any, ...], tuple[Any, ...] | None]
# Characters of records in one upsert's JSON array at most (a value is at most 1 GB).
MAX_ARRAY_CHARS = 64 * 2**20


@dataclass(frozen=True)
class _Table:
    """A target table as the catalog describes it."""

    name: str  # qualified, for messages
    ident: sql.Composable
    columns: frozenset[str]
    key: tuple[str, ...]  # primary key columns
    has_ordinality: bool = False  # a column named "ordinality" (generated ones too)


class _BadEvent(Exception):
    """Applying one event failed for its data (carries the classified error)."""

    def __init__(self, event: Event, error: SinkError) -> None:
        super().__init__(str(error))
        self.event = event
        self.error = error


class PostgresSink:
    """Applies events to target tables; see the module docstring."""

    transactional = True

    def __init__(self, config: PostgresSinkConfig, context: SinkContext | None = None) -> None:
        context = context or SinkContext()
        dsn = config.dsn.get_secret_value()
        self._dsn = dsn
        self.where = masked_dsn(dsn)
        self.destination = context.destination
        self.target_schema = config.target_schema
        self.tables = dict(config.tables)
        self.state_schema = state_schema = config.state_schema
        self.ordered = config.ordered
        self.batch_size = config.batch_size
        self.max_connections = 1 if config.ordered else config.max_connections
        # Unordered: one batch in flight per connection, cut when one is free
        # (walrelay.pipeline.scheduler), so events arriving meanwhile make the
        # next batch full instead of waiting here as many small transactions.
        self.max_batches = self.max_connections
        self.connect_timeout = config.connect_timeout
        self._sem = asyncio.Semaphore(self.max_connections)
        self._idle: list[Conn] = []
        self._ready = False
        self._meta: dict[tuple[str, str], _Table] = {}  # (schema, table) -> the target
        # (source table, routed table, the record's column names) -> the target
        # and the upsert of a row of that shape (cleared with _meta).
        self._shapes: dict[tuple[str, str | None, tuple[str, ...]], tuple[_Table, bytes]] = {}
        self._warned: set[tuple[str, str]] = set()
        # Statements as the bytes psycopg sends: composing one is ~40 us of
        # Python, once per statement kind instead of once per event. Every
        # connection goes to the same DSN, so one encoding serves them all.
        self._sql: dict[tuple[Any, ...], bytes] = {}
        self._trim_floor: Lsn | None = None
        self._trimmed_floor: Lsn | None = None
        self._last_trim = 0.0
        s = sql.Identifier(state_schema)
        claim = (
            "insert into {}.applied_events (destination, event_id, commit_lsn) "
            "select %s, i, l::pg_lsn from unnest(%s::text[], %s::text[]) as u(i, l)"
        )
        # All ids new (the batch's first try): fails on any id already recorded.
        self._q_claim_all = sql.SQL(claim).format(s)
        # After that failed: the ids that come back are the new ones.
        self._q_claim = sql.SQL(claim + " on conflict do nothing returning event_id").format(s)
        # Ids (walrelay.model.format_event_id) compared byte-wise (collation "C")
        # sort by commit LSN: those below the first id of LSN x are those of
        # commit LSNs below x, a range of the primary key.
        self._q_trim_by_key = sql.SQL(
            "delete from {}.applied_events where destination = %s and event_id < %s"
        ).format(s)
        self._q_trim_by_lsn = sql.SQL(
            "delete from {}.applied_events where destination = %s and commit_lsn < %s::pg_lsn"
        ).format(s)
        self._trim_by_key = True  # set by _prepare from the table's collation
        # Stats.
        self.applied = 0
        self.replays_skipped = 0

    @classmethod
    def from_config(cls, config: PostgresSinkConfig, context: SinkContext) -> PostgresSink:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"PostgresSink({self.where!r})"

    # -- life cycle -------------------------------------------------------------

    async def open(self) -> None:
        # SinkUnavailable: the target is down; the destination waits for it
        # (walrelay.engine.waiting_sink) and says so in /healthz.
        self._idle.append(await self._connect())

    async def close(self) -> None:
        if self.replays_skipped:
            log.info(
                "destination %s: skipped %d replayed event(s) already applied",
                self.destination,
                self.replays_skipped,
            )
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()

    def trim_below(self, lsn: Lsn) -> None:
        """Records of transactions below ``lsn`` will never be needed again."""
        if self._trim_floor is None or lsn > self._trim_floor:
            self._trim_floor = lsn

    async def _connect(self) -> Conn:
        try:
            conn: Conn = await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name=f"walrelay-sink-{self.destination}"[:63],
            )
        except psycopg.OperationalError as e:
            raise SinkUnavailable(
                f"postgres sink {self.where}: cannot connect: {str(e).strip()}"
            ) from None
        try:
            await require_flushed_commits(conn)
        except psycopg.OperationalError as e:
            await conn.close()
            raise SinkUnavailable(f"postgres sink {self.where}: {str(e).strip()}") from None
        if not self._ready:
            try:
                await self._prepare(conn)
            except psycopg.OperationalError as e:
                await conn.close()
                raise SinkUnavailable(f"postgres sink {self.where}: {str(e).strip()}") from None
            except psycopg.Error as e:
                await conn.close()
                raise SinkError(
                    f"postgres sink {self.where}: cannot create {self.state_schema}."
                    f"applied_events: {str(e).strip()}"
                ) from None
            self._ready = True
        return conn

    async def _prepare(self, conn: Conn) -> None:
        s = sql.Identifier(self.state_schema)
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(%s)", (0x57414C41,))
            await conn.execute(sql.SQL("create schema if not exists {}").format(s))
            await conn.execute(
                sql.SQL(
                    "create table if not exists {}.applied_events ("
                    'destination text not null, event_id text collate "C" not null, '
                    "commit_lsn pg_lsn not null, applied_at timestamptz not null default now(), "
                    "primary key (destination, event_id))"
                ).format(s)
            )
            # A table made before: its ids take collation "C" (the trim is then a
            # range of the key), and the index on commit_lsn the trim used goes (a
            # third of the claim's cost on the target). Without the right to alter
            # the table (another role owns it) it stays as it is, trimmed as before.
            if await self._event_id_collation(conn) != "C":
                try:
                    async with conn.transaction():
                        await conn.execute(
                            sql.SQL(
                                "alter table {}.applied_events"
                                ' alter column event_id type text collate "C"'
                            ).format(s)
                        )
                except psycopg.errors.InsufficientPrivilege as e:
                    log.warning(
                        "postgres sink %s: cannot alter %s.applied_events (%s); its records"
                        " are trimmed by commit_lsn as before",
                        self.where,
                        self.state_schema,
                        str(e).strip(),
                    )
            self._trim_by_key = await self._event_id_collation(conn) == "C"
            if self._trim_by_key:
                with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                    async with conn.transaction():
                        await conn.execute(
                            sql.SQL(
                                "drop index if exists {}.applied_events_destination_lsn"
                            ).format(s)
                        )

    async def _event_id_collation(self, conn: Conn) -> str | None:
        cur = await conn.execute(
            "select l.collname from pg_attribute a"
            " join pg_collation l on l.oid = a.attcollation"
            " where a.attrelid = %s::regclass and a.attname = 'event_id'",
            (
                sql.SQL("{}.applied_events")
                .format(sql.Identifier(self.state_schema))
                .as_string(conn),
            ),
        )
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    def _trim_query(self, conn: Conn) -> bytes:
        if self._trim_by_key:
            return self._query(conn, ("trim",), lambda: self._q_trim_by_key)
        return self._query(conn, ("trim_by_lsn",), lambda: self._q_trim_by_lsn)

    def _trim_params(self, trim: Lsn) -> tuple[str, str]:
        """The trim's parameters: below the first id of commit LSN ``trim`` (ids
        collated "C"), or below ``trim`` itself (a table left as it was)."""
        return (
            self.destination,
            format_event_id(trim, 0) if self._trim_by_key else format_lsn(trim),
        )

    # -- delivery ---------------------------------------------------------------

    async def deliver(self, events: Sequence[Event]) -> None:
        if not events:
            return
        async with self._sem:
            conn = self._idle.pop() if self._idle else await self._connect()
            ok = False
            try:
                try:
                    await self._apply(conn, events)
                except _BadEvent:
                    if len(events) == 1:
                        raise
                    failures = await self._apply_each(conn, events)
                    if failures:
                        ok = not conn.closed
                        raise batch_error(failures, len(events), "events") from None
                ok = True
            except _BadEvent as bad:
                ok = not conn.closed
                raise bad.error from None
            except psycopg.OperationalError as e:
                raise SinkUnavailable(
                    f"postgres sink {self.where}: {type(e).__name__}: {str(e).strip()}"
                ) from None
            finally:
                if ok and not conn.closed:
                    self._idle.append(conn)
                else:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _apply_each(self, conn: Conn, events: Sequence[Event]) -> list[SinkError]:
        """After a batch failed for its data: one transaction per event, in order, so
        every good event is applied (and recorded: the retry skips it). Ordered, the
        first bad event ends it (nothing may be applied before it); unordered (the
        batch's keys are distinct) the rest are tried too, so that only failures are
        left to retry or park (the policy in :mod:`walrelay.sinks.base`)."""
        failures: list[SinkError] = []
        for event in events:
            try:
                await self._apply(conn, [event])
            except _BadEvent as bad:
                failures.append(bad.error)
                if self.ordered:
                    break
        return failures

    async def _apply(self, conn: Conn, events: Sequence[Event]) -> None:
        """Claim, apply and commit ``events`` in one transaction: in two round
        trips when none of them was applied before, else in a second try that
        skips those that were."""
        # Array literals made here: ids and LSNs never need quoting, and psycopg's
        # list dumper costs more per element.
        ids = "{" + ",".join([e.id for e in events]) + "}"
        lsns = "{" + ",".join([format_lsn(e.commit_lsn) for e in events]) + "}"
        try:
            statements = await self._statements_of(conn, events)
        except (SinkError, psycopg.Error) as e:
            if isinstance(e, psycopg.OperationalError):
                raise
            statements = None  # a replayed event may not be appliable any more
        if statements is not None and await self._apply_all_new(
            conn, events, ids, lsns, statements
        ):
            return
        await self._apply_claiming(conn, events, ids, lsns)

    async def _statements_of(self, conn: Conn, events: Sequence[Event]) -> list[_Statement]:
        statements: list[_Statement] = []
        for event in events:
            statements.extend(await self._statements(conn, event))
        return statements

    async def _apply_all_new(
        self,
        conn: Conn,
        events: Sequence[Event],
        ids: str,
        lsns: str,
        statements: list[_Statement],
    ) -> bool:
        """``BEGIN``, the claim of every id, the statements (and a trim) and
        ``COMMIT`` in one pipeline: one round trip. False, with nothing applied,
        when an id was already recorded (a replay)."""
        trim = self._take_trim()
        claim = self._query(conn, ("claim_all",), lambda: self._q_claim_all)
        try:
            try:
                async with conn.pipeline(), conn.transaction():
                    cur = conn.cursor()
                    await cur.execute(claim, (self.destination, ids, lsns))
                    # In the events' order: a run of upserts of distinct rows is
                    # one statement, a run of other same statements one executemany.
                    for query, params_seq in _runs(statements):
                        await cur.executemany(query, params_seq)
                    if trim is not None:
                        await cur.execute(self._trim_query(conn), self._trim_params(trim))
                    failpoints.hit(failpoints.POSTGRES_BEFORE_COMMIT)
                # The transaction's exit queued COMMIT, the pipeline's sent it all
                # and read every result: the first error is raised there.
            except psycopg.Error as e:
                if not isinstance(e, psycopg.OperationalError):
                    # The server skipped the rest, COMMIT too: the transaction
                    # is left failed, and the connection is used again.
                    await conn.rollback()
                raise
        except psycopg.errors.UniqueViolation as e:
            if e.diag.table_name == "applied_events" and e.diag.schema_name == self.state_schema:
                self._last_trim = 0.0  # the trim was rolled back: the second try trims
                return False
            raise _BadEvent(events[0], self._classify(e, events)) from None
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            raise self._failed_batch(e, events) from None
        if trim is not None:
            self._trimmed_floor = trim
        self.applied += len(events)
        return True

    async def _apply_claiming(
        self, conn: Conn, events: Sequence[Event], ids: str, lsns: str
    ) -> None:
        """Claim, apply and commit the events not applied before (the others are
        skipped), in one transaction."""
        trim = self._take_trim()
        try:
            async with conn.transaction():
                claim = self._query(conn, ("claim",), lambda: self._q_claim)
                cur = await conn.execute(claim, (self.destination, ids, lsns))
                new = {str(r[0]) for r in await cur.fetchall()}
                statements: list[_Statement] = []
                for event in events:
                    if event.id in new:
                        statements.extend(await self._statements(conn, event))
                if statements:
                    async with conn.pipeline():
                        # In the events' order: a run of upserts of distinct rows is
                        # one statement, a run of other same statements one executemany.
                        cur = conn.cursor()
                        for query, params_seq in _runs(statements):
                            await cur.executemany(query, params_seq)
                if trim is not None:
                    await conn.execute(self._trim_query(conn), self._trim_params(trim))
                failpoints.hit(failpoints.POSTGRES_BEFORE_COMMIT)
        except psycopg.OperationalError:
            raise
        except SinkError as e:
            raise _BadEvent(events[0], e) from None
        except psycopg.Error as e:
            raise self._failed_batch(e, events) from None
        if trim is not None:
            self._trimmed_floor = trim
        self.applied += len(new)
        self.replays_skipped += len(events) - len(new)

    def _failed_batch(self, e: psycopg.Error, events: Sequence[Event]) -> _BadEvent:
        """The error of a batch the target refused; a missing table or column (or
        an ambiguous one: a column "ordinality" added) also forgets what was cached
        of the targets (they changed)."""
        changed = (
            psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedColumn,
            psycopg.errors.AmbiguousColumn,
        )
        if isinstance(e, changed):
            self._meta.clear()
            self._shapes.clear()
        return _BadEvent(events[0], self._classify(e, events))

    def _take_trim(self) -> Lsn | None:
        floor = self._trim_floor
        if floor is None or floor == self._trimmed_floor:
            return None
        now = time.monotonic()
        if now - self._last_trim < TRIM_INTERVAL:
            return None
        self._last_trim = now
        return floor

    def _classify(self, e: psycopg.Error, events: Sequence[Event]) -> SinkError:
        state = e.sqlstate or ""
        where = events[0].id if len(events) == 1 else f"{len(events)} events from {events[0].id}"
        text = f"postgres sink {self.where}: {state} {str(e).strip()} (applying {where})"
        if state.startswith("22") or (state.startswith("23") and state != "23503"):
            return PoisonEvent(text)
        return SinkError(text)

    # -- statements -------------------------------------------------------------

    def _target_name(self, source: str, routed: str | None = None) -> tuple[str, str]:
        """(schema, table) of ``source``'s target: ``routed`` (the event's route
        topic) when given, else the ``tables`` mapping, else the same name."""
        src_schema, _, src_table = source.partition(".")
        target = self.tables.get(source) if routed is None else routed
        default_schema = self.target_schema or src_schema
        if target is None:
            return default_schema, src_table
        if "." in target:
            schema, _, table = target.partition(".")
            return schema, table
        return default_schema, target

    async def _table(self, conn: Conn, source: str, routed: str | None = None) -> _Table | None:
        schema, table = self._target_name(source, routed)
        info = self._meta.get((schema, table))
        if info is not None:
            return info
        cur = await conn.execute(
            "select c.oid, a.attname, a.attgenerated <> '' "
            "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped "
            "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')",
            (schema, table),
        )
        rows = await cur.fetchall()
        if not rows:
            return None  # not cached: it may be created meanwhile
        oid = rows[0][0]
        columns = frozenset(str(r[1]) for r in rows if not r[2])
        cur = await conn.execute(
            "select a.attname from pg_index i "
            "join lateral unnest(i.indkey) with ordinality as k(attnum, n) on true "
            "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum "
            "where i.indrelid = %s and i.indisprimary order by k.n",
            (oid,),
        )
        key = tuple(str(r[0]) for r in await cur.fetchall())
        ordinality = any(r[1] == "ordinality" for r in rows)
        info = _Table(f"{schema}.{table}", sql.Identifier(schema, table), columns, key, ordinality)
        self._meta[(schema, table)] = info
        return info

    async def _statements(self, conn: Conn, event: Event) -> list[_Statement]:
        op = event.op
        if op == "message":
            return []
        env = event.envelope()
        if op == "truncate":
            return await self._truncate(conn, event, env)
        # A row envelope's route names its table (an outbox-routed body is no row).
        routed = event.route.topic if event.route is not None and "record" in env else None
        record = env.get("record")
        shape_key = None
        if op != "delete" and type(record) is dict:
            # A row of a shape seen before: its target, checks and statement are known.
            shape_key = (event.table, routed, tuple(record))
            shape = self._shapes.get(shape_key)
            if shape is not None and not _key_changed(shape[0], env.get("old"), record):
                row = tuple([str(record[k]) for k in shape[0].key])
                return [(shape[1], (_record_json(record),), row)]
        table = await self._table(conn, event.table, routed)
        if table is None:
            schema, name = self._target_name(event.table, routed)
            raise SinkError(
                f"postgres sink {self.where}: target table {schema}.{name} (for {event.table})"
                " does not exist (create it; delivery retries meanwhile)"
            )
        if not table.key:
            raise PoisonEvent(
                f"postgres sink {self.where}: target table {table.name} has no primary key"
                " to upsert on (fix: ALTER TABLE ... ADD PRIMARY KEY)"
            )
        out: list[_Statement] = []
        old = env.get("old")
        if op == "delete":
            self._require_key(table, old, event)
            out.append((self._delete_sql(conn, table), (event.body.decode(),), None))
            return out
        if not isinstance(record, dict):
            return out
        cols = tuple(c for c in record if c in table.columns)
        if _key_changed(table, old, record):
            # The key changed: the old row is moved (an UPDATE of its key and of
            # the columns the event carries), so a TOASTed column the server did
            # not resend, and target-only columns, keep their values; without an
            # old row, the row is upserted.
            self._require_key(table, record, event)
            body = event.body.decode()
            out.append((self._move_sql(conn, table, cols), (body, body, body), None))
            return out
        for c in record:
            if c not in table.columns and (table.name, c) not in self._warned:
                self._warned.add((table.name, c))
                log.warning(
                    "postgres sink: column %s of %s is not in target %s (or is generated);"
                    " its values are not applied",
                    c,
                    event.table,
                    table.name,
                )
        self._require_key(table, record, event)
        row = tuple(str(record[k]) for k in table.key)
        upsert = self._upsert_sql(conn, table, cols)
        if shape_key is not None:
            self._shapes[shape_key] = (table, upsert)
        out.append((upsert, (_record_json(record),), row))
        return out

    def _require_key(self, table: _Table, values: Any, event: Event) -> None:
        if not isinstance(values, dict) or any(k not in values for k in table.key):
            raise PoisonEvent(
                f"postgres sink {self.where}: event {event.id} ({event.op} on {event.table})"
                f" does not carry the target key ({', '.join(table.key)}) of {table.name}"
                " (fix: make the target's primary key the source's replica identity)"
            )

    def _query(
        self, conn: Conn, key: tuple[Any, ...], build: Callable[[], sql.Composable]
    ) -> bytes:
        """The statement ``key`` as bytes, composed by ``build`` the first time."""
        q = self._sql.get(key)
        if q is None:
            q = self._sql[key] = build().as_bytes(conn)
        return q

    def _upsert_sql(self, conn: Conn, table: _Table, cols: tuple[str, ...]) -> bytes:
        def build() -> sql.Composable:
            names, values, conflict = _names(cols), _names(cols, "r"), _names(table.key)
            action = _on_conflict(table, cols)
            if table.has_ordinality:
                # The recordset's "with ordinality" would add a second such column.
                rows = (
                    "from jsonb_array_elements(%s::jsonb) with ordinality as e(record, n) "
                    "cross join lateral jsonb_populate_record(null::{t}, e.record) as r "
                    "order by e.n"
                )
            else:  # a sixth less of the target's work
                rows = (
                    "from jsonb_populate_recordset(null::{t}, %s::jsonb) with ordinality as r "
                    "order by r.ordinality"
                )
            return sql.SQL(
                "insert into {t} ({names}) select {values} "
                + rows
                + " on conflict ({conflict}) {action}"
            ).format(t=table.ident, names=names, values=values, conflict=conflict, action=action)

        key = ("upsert", table.name, table.key, cols, table.has_ordinality)
        return self._query(conn, key, build)

    def _move_sql(self, conn: Conn, table: _Table, cols: tuple[str, ...]) -> bytes:
        def build() -> sql.Composable:
            key, names, values = _names(table.key), _names(cols), _names(cols, "r")
            action = _on_conflict(table, cols)
            return sql.SQL(
                "with moved as (update {t} set ({names}) = (select {names} from "
                "jsonb_populate_record(null::{t}, %s::jsonb -> 'record')) where ({key}) = "
                "(select {key} from jsonb_populate_record(null::{t}, %s::jsonb -> 'old')) "
                "returning 1) "
                "insert into {t} ({names}) select {values} "
                "from jsonb_populate_record(null::{t}, %s::jsonb -> 'record') as r "
                "where not exists (select from moved) on conflict ({key}) {action}"
            ).format(t=table.ident, key=key, names=names, values=values, action=action)

        return self._query(conn, ("move", table.name, table.key, cols), build)

    def _delete_sql(self, conn: Conn, table: _Table) -> bytes:
        def build() -> sql.Composable:
            key = _names(table.key)
            return sql.SQL(
                "delete from {t} where ({key}) = "
                "(select {key} from jsonb_populate_record(null::{t}, %s::jsonb -> 'old'))"
            ).format(t=table.ident, key=key)

        return self._query(conn, ("delete", table.name, table.key), build)

    async def _truncate(self, conn: Conn, event: Event, env: dict[str, Any]) -> list[_Statement]:
        targets: list[sql.Composable] = []
        for source in env.get("tables") or []:
            table = await self._table(conn, str(source))
            if table is None:
                log.warning(
                    "postgres sink: TRUNCATE of %s: no target table %s; skipped",
                    source,
                    ".".join(self._target_name(str(source))),
                )
                continue
            targets.append(table.ident)
        if not targets:
            return []
        q: sql.Composed = sql.SQL("truncate {}{}").format(
            sql.SQL(", ").join(targets),
            sql.SQL(" restart identity") if env.get("restart_identity") else sql.SQL(""),
        )
        return [(q.as_bytes(conn), (), None)]


def _key_changed(table: _Table, old: Any, record: dict[str, Any]) -> bool:
    """An update whose old row (all of it key) has another target key."""
    return (
        isinstance(old, dict)
        and all(k in old for k in table.key)
        and any(old[k] != record.get(k) for k in table.key)
    )


def _names(columns: Iterable[str], qualifier: str | None = None) -> sql.Composable:
    """``a, b`` (or ``r.a, r.b`` with a qualifier), quoted as identifiers."""
    if qualifier is None:
        return sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(", ").join(sql.Identifier(qualifier, c) for c in columns)


def _on_conflict(table: _Table, cols: tuple[str, ...]) -> sql.Composable:
    """An upsert's action on its key: set the other columns ``cols`` holds."""
    updates = [c for c in cols if c not in table.key]
    if not updates:
        return sql.SQL("do nothing")
    return sql.SQL("do update set {}").format(
        sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in updates)
    )


def _runs(
    statements: Sequence[_Statement], max_chars: int = MAX_ARRAY_CHARS
) -> Iterator[tuple[bytes, list[tuple[Any, ...]]]]:
    """The statements as (query, parameter sets) in their order: a run of upserts
    of one query and distinct rows (up to ``max_chars`` of records) as one
    statement with the JSON array of their records; a run of another query as
    one parameter set each."""
    query: bytes | None = None
    params: list[tuple[Any, ...]] = []
    bodies: list[str] = []
    chars = 0
    rows: set[tuple[Any, ...]] | None = None  # of the current run of upserts
    for q, p, row in statements:
        if (
            q != query
            or (row is None) != (rows is None)
            or (rows is not None and (row in rows or chars + len(p[0]) > max_chars))
        ):
            if query is not None:
                yield query, params if rows is None else [(_json_array(bodies),)]
            query, params, bodies, chars = q, [], [], 0
            rows = None if row is None else set()
        if rows is None or row is None:
            params.append(p)
        else:
            rows.add(row)
            bodies.append(p[0])
            chars += len(p[0])
    if query is not None:
        yield query, params if rows is None else [(_json_array(bodies),)]


def _json_array(bodies: list[str]) -> str:
    """The bodies (each a JSON document) as one JSON array, without re-encoding them."""
    return "[" + ",".join(bodies) + "]"


def _record_json(record: dict[str, Any]) -> str:
    """An envelope's record as JSON, every number as it was: the upsert sends
    the records, not their envelopes (a third of the text, which the target
    parses as jsonb: the upsert's cost on the target falls by a third)."""
    return exact_json.dumps(record).decode()
