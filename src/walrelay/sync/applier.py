"""One direction of a sync: a node's transactions applied to another node.

Each source transaction becomes **one** target transaction, in source commit
order, that starts with ``pg_replication_origin_xact_setup(source end LSN,
source commit time)`` under the session origin of the source node
(:meth:`SyncSettings.origin`). So the applied rows carry the source's commit
time and origin (what conflict detection on later changes reads with
``pg_xact_commit_timestamp_origin(xmin)``), the target's own reader sees the
origin and drops the transaction (no echo), and the origin's progress moves
in the same commit as the rows: after a crash the direction resumes from
``pg_replication_origin_progress`` and applies nothing twice and skips
nothing.

Per change, the target row is read ``for update`` first; conflicts
(:mod:`walrelay.sync.conflicts`) are resolved by the table's policy and
logged in the state schema's ``conflicts`` table in the same transaction.
A source update or delete comes after a logical message from the source's
``walrelay_sync_previous`` trigger naming the version it replaced; the change
conflicts when that is not the target's version
(:func:`~walrelay.sync.conflicts.overrides_unseen`). The applier's own writes
set ``walrelay.sync_applying`` so that the trigger stays silent for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import sql

from walrelay.errors import WalrelayError
from walrelay.model import UNCHANGED_TOAST, Change, Lsn, format_lsn, parse_lsn
from walrelay.state.durability import require_flushed_commits
from walrelay.state.sync import (
    APPLYING_SETTING,
    OVERWRITTEN_PREFIX,
    ConflictRecord,
    insert_conflict,
    record_tombstone,
    tombstone_of,
)
from walrelay.sync.catalog import NodeTables, TableMeta, inspect_node
from walrelay.sync.config import SyncSettings
from walrelay.sync.conflicts import (
    Conflict,
    ConflictKind,
    Decision,
    Overwritten,
    Resolver,
    Version,
    overrides_unseen,
)
from walrelay.sync.transactions import Marker, SourceTx

__all__ = ["Direction", "DirectionStats", "ReaderHandle"]

log = logging.getLogger("walrelay.sync")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Row = dict[str, Any]

_RETRYABLE = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.UniqueViolation,  # a local insert of the same key raced our check
)
_UNKNOWN_PRIORITY = 1 << 30


class ReaderHandle(Protocol):
    """What a direction needs from its source node's reader."""

    @property
    def epoch(self) -> int: ...

    def request_rewind(self) -> None: ...


@dataclass
class DirectionStats:
    """Counters of one direction, since the process started."""

    transactions: int = 0
    changes: int = 0
    replays_skipped: int = 0
    conflicts: Counter[str] = field(default_factory=Counter)
    last_commit_time: datetime | None = None  # source commit time of the last applied tx
    last_applied_at: float = 0.0  # loop time of that apply
    connected: bool = False


@dataclass(frozen=True, slots=True)
class _Note:
    """An overwritten version and the key of the change it comes before."""

    key: list[str | None]
    version: Overwritten


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class _Local:
    row: Row
    own: bool  # written by the current transaction (an earlier change of the same source tx)
    committed_at: datetime | None
    roident: int


class _Retry(Exception):
    pass


class Direction:
    """Applies ``source``'s transactions to ``target``; see the module docstring."""

    def __init__(
        self,
        settings: SyncSettings,
        source: str,
        target: str,
        resolvers: Mapping[str, Resolver],
    ) -> None:
        self.settings = settings
        self.source = source
        self.target = target
        self.name = f"{source}->{target}"
        self.origin = settings.origin(source)
        self._resolvers = resolvers
        self._schema = settings.state_schema
        self._priority = {n: c.priority for n, c in settings.nodes.items()}
        # (reader epoch, item): items of an older epoch than need_epoch are stale.
        self.queue: asyncio.Queue[tuple[int, SourceTx | Marker]] = asyncio.Queue(
            settings.queue_transactions
        )
        self.attached = False
        self.need_epoch = 1
        self.applied_end: Lsn = 0
        """Every source transaction ending at or below this is applied (or was an echo)."""
        self.passed_time: datetime | None = None
        """Source commit time this direction has passed (tombstone trimming)."""
        self.ever_tried = asyncio.Event()
        self.stats = DirectionStats()
        self._tables: NodeTables = {}
        self._origin_names: dict[int, str] = {}
        self._sql: dict[tuple[Any, ...], sql.Composed] = {}
        self._warned: set[str] = set()
        # (source end LSN, conflicts counted) of a transaction whose COMMIT may or
        # may not have happened (the connection broke during it).
        self._in_doubt: tuple[Lsn, Counter[str]] | None = None

    # -- life cycle -------------------------------------------------------------

    async def run(self, reader: ReaderHandle, stop: asyncio.Event) -> None:
        backoff = self.settings.reconnect
        delay = backoff.initial
        while not stop.is_set():
            conn: Conn | None = None
            try:
                conn = await self._connect()
                self._attach(reader)
                delay = backoff.initial
                await self._consume(conn, stop)
            except (psycopg.Error, OSError) as e:
                log.warning(
                    "sync %s: %s; retrying in %.1fs",
                    self.name,
                    (str(e).strip().splitlines() or [type(e).__name__])[0],
                    delay,
                )
            except (WalrelayError, TypeError, ValueError) as e:
                # A node's setup changed under us (e.g. track_commit_timestamp off), or
                # a custom policy failed: this direction waits, the others go on.
                log.error("sync %s: %s; retrying in %.1fs", self.name, e, delay)
            finally:
                self._detach()
                self.ever_tried.set()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * backoff.multiplier, backoff.max)

    async def _connect(self) -> Conn:
        conn: Conn = await psycopg.AsyncConnection.connect(
            self.settings.nodes[self.target].dsn_value,
            autocommit=True,
            connect_timeout=5,
            application_name=f"walrelay-sync-{self.name}"[:63],
        )
        try:
            await require_flushed_commits(conn)
            self._tables = await inspect_node(conn, self.target, self.settings.tables)
            await conn.execute(
                "select pg_replication_origin_create(%s) where not exists "
                "(select 1 from pg_replication_origin where roname = %s)",
                (self.origin, self.origin),
            )
            await conn.execute("select pg_replication_origin_session_setup(%s)", (self.origin,))
            cur = await conn.execute(
                "select pg_replication_origin_progress(%s, true)::text", (self.origin,)
            )
            row = await cur.fetchone()
            progress = parse_lsn(row[0]) if row and row[0] else 0
            await self._load_origin_names(conn)
        except BaseException:
            await conn.close()
            raise
        self._settle_in_doubt(progress)
        if progress > self.applied_end:
            self.applied_end = progress
        log.info("sync %s: connected; applied up to %s", self.name, format_lsn(self.applied_end))
        return conn

    def _settle_in_doubt(self, progress: Lsn) -> None:
        """The origin's ``progress`` says whether the COMMIT in doubt happened; if
        not, its conflicts are uncounted (the transaction is applied again)."""
        if self._in_doubt is None:
            return
        end, counted = self._in_doubt
        self._in_doubt = None
        if progress < end:
            self.stats.conflicts -= counted

    def _attach(self, reader: ReaderHandle) -> None:
        # The reader may be past our position: it must start again from the slot
        # (which never confirms past any direction) before we take anything.
        if reader.epoch == 0:
            self.need_epoch = 1
        else:
            self.need_epoch = reader.epoch + 1
            reader.request_rewind()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.attached = True
        self.stats.connected = True
        self.ever_tried.set()

    def _detach(self) -> None:
        self.attached = False
        self.stats.connected = False
        while not self.queue.empty():
            self.queue.get_nowait()

    async def _consume(self, conn: Conn, stop: asyncio.Event) -> None:
        queue = self.queue
        while True:
            get = asyncio.ensure_future(queue.get())
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({get, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                stopping.cancel()
                return
            stopping.cancel()
            epoch, item = get.result()
            if epoch < self.need_epoch:
                continue  # sent before the reader started again for us
            if isinstance(item, Marker):
                if item.end_lsn > self.applied_end:
                    self.applied_end = item.end_lsn
                if item.at is not None and (self.passed_time is None or item.at > self.passed_time):
                    self.passed_time = item.at
                continue
            if item.end_lsn <= self.applied_end:
                self.stats.replays_skipped += 1
                continue
            await self._apply_tx(conn, item)

    # -- one transaction --------------------------------------------------------

    async def _apply_tx(self, conn: Conn, tx: SourceTx) -> None:
        for attempt in range(10):
            conflicts: list[ConflictRecord] = []
            counted: Counter[str] = Counter()
            try:
                # Not pipelined: psycopg's async pipeline polls a writable socket
                # while it waits, which costs the one core all directions share.
                async with conn.transaction():
                    await conn.execute(
                        "select pg_replication_origin_xact_setup(%s::pg_lsn, %s), "
                        "pg_current_xact_id(), "  # an xid, so that the commit moves the origin
                        "set_config(%s, 'on', true)",  # our writes log no overwritten version
                        (format_lsn(tx.end_lsn), tx.committed_at, APPLYING_SETTING),
                    )
                    overwritten: _Note | None = None
                    for change in tx.changes:
                        if change.relation is None and change.prefix == OVERWRITTEN_PREFIX:
                            overwritten = self._overwritten(change.content)
                            continue
                        await self._apply_change(conn, tx, change, conflicts, overwritten)
                        overwritten = None
                    # Counted before the COMMIT goes out: the logged rows become visible
                    # at the commit, and the reply reaches this task later still, so
                    # counting after it would let the metric say fewer conflicts than
                    # the conflicts table holds.
                    counted = Counter(c.conflict for c in conflicts)
                    self.stats.conflicts += counted
                break
            except _RETRYABLE as e:
                self.stats.conflicts -= counted  # the commit failed: nothing was logged
                log.info(
                    "sync %s: retrying transaction %s: %s", self.name, format_lsn(tx.commit_lsn), e
                )
                await asyncio.sleep(0.05 * (attempt + 1))
            except BaseException:
                if counted:
                    # The connection broke (or we were cancelled) during the COMMIT:
                    # whether it happened is known from the origin's progress when
                    # the direction connects again (_connect).
                    self._in_doubt = (tx.end_lsn, counted)
                raise
        else:
            raise psycopg.errors.SerializationFailure(
                f"transaction {format_lsn(tx.commit_lsn)} failed 10 times"
            )
        self.applied_end = tx.end_lsn
        if self.passed_time is None or tx.committed_at > self.passed_time:
            self.passed_time = tx.committed_at
        st = self.stats
        st.transactions += 1
        st.changes += len(tx.changes)
        st.last_commit_time = tx.committed_at
        st.last_applied_at = asyncio.get_running_loop().time()
        for c in conflicts:
            log.info(
                "sync %s: %s on %s %s resolved %s",
                self.name,
                c.conflict,
                c.table,
                c.key,
                c.resolution,
            )

    def _overwritten(self, content: bytes | None) -> _Note | None:
        """The version a source change replaced, from the source trigger's message."""
        try:
            note = orjson.loads(content or b"")
            seconds = Decimal(note["t"])
            key = [None if k is None else str(k) for k in note["k"]]
            origin = str(note["o"])
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidOperation):
            log.warning("sync %s: unreadable %s message ignored", self.name, OVERWRITTEN_PREFIX)
            return None
        # An origin that is not this sync's (another replication tool) counts as
        # the source node's own write, as in _version.
        node = self.settings.node_of_origin(origin) if origin else None
        at = _EPOCH + timedelta(microseconds=int(seconds * 1_000_000))
        return _Note(key, Overwritten(node or self.source, at))

    async def _apply_change(
        self,
        conn: Conn,
        tx: SourceTx,
        change: Change,
        conflicts: list[ConflictRecord],
        note: _Note | None = None,
    ) -> None:
        rel = change.relation
        if change.op == "truncate":
            if "truncate" not in self._warned:
                self._warned.add("truncate")
                log.warning("sync %s: TRUNCATE is not synced; skipped", self.name)
            return
        if rel is None:
            return  # a logical message
        meta = self._tables.get(rel.qualified_name)
        if meta is None:
            return
        names = [c.name for c in rel.columns]
        new = _values(names, change.new, meta) if change.new is not None else None
        old = _values(names, change.old, meta) if change.old is not None else None
        if change.op == "insert":
            assert new is not None
            key = [new[k] for k in meta.key]
        elif old is not None and all(k in old for k in meta.key):
            key = [old[k] for k in meta.key]
        else:
            assert new is not None
            key = [new[k] for k in meta.key]
        local = await self._read_local(conn, meta, key)
        overwritten = note.version if note is not None and note.key == key else None
        remote = Version(
            row=new if change.op != "delete" else None,
            node=self.source,
            committed_at=tx.committed_at,
            priority=self._priority[self.source],
        )
        own = local is not None and local.own
        kind: ConflictKind | None = None
        local_version: Version | None = None
        if local is not None:
            local_version = self._version(local.row, local.committed_at, local.roident)
        if change.op == "insert":
            if own:
                await self._update(conn, meta, key, _complete(new))
                return
            if local is None:
                deleted = await self._tombstone(conn, meta, key)
                if not _deleted_after(deleted, tx.committed_at):
                    await self._insert(conn, meta, _complete(new))
                    return
                # Deleted here after the insert was made (in a mesh, another node's
                # delete can overtake the insert): an insert counts as an update.
                kind = "update_deleted"
                local_version = deleted
            else:
                kind = "insert_exists"
        elif change.op == "update":
            assert new is not None
            if local is None:
                deleted = await self._tombstone(conn, meta, key)
                kind = (
                    "update_deleted"
                    if _deleted_after(deleted, tx.committed_at)
                    else "update_missing"
                )
                local_version = deleted or Version(None, None, None, _UNKNOWN_PRIORITY)
            elif own or not self._conflicts(local_version, tx.committed_at, overwritten):
                await self._update(conn, meta, key, _present(new))
                return
            else:
                kind = "update_origin_differs"
        else:  # delete
            if local is None:
                kind = "delete_missing"
            elif own or not self._conflicts(local_version, tx.committed_at, overwritten):
                await self._delete(conn, meta, key)
                return
            else:
                kind = "delete_origin_differs"
        assert local_version is not None or kind == "delete_missing"
        key_map = dict(zip(meta.key, key, strict=True))
        if kind == "delete_missing":
            # Remember the delete: an older insert or update of the key may still
            # come from a third node, and must not bring the row back.
            await record_tombstone(conn, self._schema, meta.name, key)
            resolution = "skip"
        else:
            assert local_version is not None
            policy = self._resolvers[meta.name]
            decision = policy(Conflict(meta.name, kind, key_map, local_version, remote))
            await self._carry_out(conn, meta, key, local is not None, change.op, new, decision)
            resolution = decision.label
        record = ConflictRecord(
            table=meta.name,
            key=key_map,
            conflict=kind,
            local_row=local.row if local is not None else None,
            local_origin=local_version.node if local_version is not None else None,
            local_committed_at=local_version.committed_at if local_version is not None else None,
            remote_row=_present(new) if new is not None else (old or key_map),
            remote_origin=self.source,
            remote_committed_at=tx.committed_at,
            resolution=resolution,
        )
        await insert_conflict(conn, self._schema, self.settings.name, record)
        conflicts.append(record)

    def _conflicts(
        self, local: Version | None, remote_time: datetime, overwritten: Overwritten | None
    ) -> bool:
        return overrides_unseen(local, self.source, remote_time, overwritten)

    async def _carry_out(
        self,
        conn: Conn,
        meta: TableMeta,
        key: list[str | None],
        exists: bool,
        op: str,
        new: Row | None,
        decision: Decision,
    ) -> None:
        if decision.custom:
            row = decision.row
            if row is None:
                if exists:
                    await self._delete(conn, meta, key)
            elif exists:
                await self._update(conn, meta, key, row)
            else:
                await self._insert(conn, meta, row)
            return
        if not decision.apply_remote:
            return
        if op == "delete":
            if exists:
                await self._delete(conn, meta, key)
            return
        assert new is not None
        if exists:
            await self._update(conn, meta, key, _present(new))
        else:
            row = _present(new)
            if len(row) < len(new):
                log.warning(
                    "sync %s: %s %s re-inserted without its unchanged TOAST columns",
                    self.name,
                    meta.name,
                    key,
                )
            await self._insert(conn, meta, row)

    def _version(self, row: Row | None, committed_at: datetime | None, roident: int) -> Version:
        if committed_at is None:
            return Version(row, None, None, _UNKNOWN_PRIORITY)
        # A row written by another replication tool (an origin not of this sync) is
        # synced from this node like a local write, so it counts as this node's.
        name = self._origin_names.get(roident) if roident else None
        node = (self.settings.node_of_origin(name) if name is not None else None) or self.target
        return Version(row, node, committed_at, self._priority[node])

    async def _tombstone(
        self, conn: Conn, meta: TableMeta, key: list[str | None]
    ) -> Version | None:
        """The last committed delete of the key on this node, as a version."""
        tomb = await tombstone_of(conn, self._schema, meta.name, key)
        if tomb is None:
            return None
        await self._know_origin(conn, tomb[1])
        return self._version(None, tomb[0], tomb[1])

    async def _know_origin(self, conn: Conn, roident: int) -> None:
        """Origins are created by other directions while this one runs: reload
        the names when a row carries an id not seen yet."""
        if roident and roident not in self._origin_names:
            await self._load_origin_names(conn)

    async def _load_origin_names(self, conn: Conn) -> None:
        cur = await conn.execute("select roident::int, roname from pg_replication_origin")
        self._origin_names = {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    # -- statements -------------------------------------------------------------

    async def _read_local(
        self, conn: Conn, meta: TableMeta, key: list[str | None]
    ) -> _Local | None:
        cols = list(meta.columns)
        q = self._sql.get(("read", meta.name))
        if q is None:
            # The commit time and origin are computed in the select list, from the
            # row FOR UPDATE returns: when it waited for another transaction's
            # change of the row, that is the new version, and a lateral join
            # would have kept the old version's time (a newer write would lose).
            q = sql.SQL(
                "select {}, t.xmin = pg_current_xact_id()::xid, "
                "(pg_xact_commit_timestamp_origin(t.xmin)).timestamp, "
                "(pg_xact_commit_timestamp_origin(t.xmin)).roident::int "
                "from {} t where {} for update"
            ).format(
                sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in cols),
                meta.ident,
                self._key_where(meta),
            )
            self._sql[("read", meta.name)] = q
        cur = await conn.execute(q, key)
        row = await cur.fetchone()
        if row is None:
            return None
        n = len(cols)
        await self._know_origin(conn, int(row[n + 2] or 0))
        return _Local(
            dict(zip(cols, row[:n], strict=True)), bool(row[n]), row[n + 1], int(row[n + 2] or 0)
        )

    def _key_where(self, meta: TableMeta) -> sql.Composable:
        return sql.SQL(" and ").join(
            sql.SQL("t.{} = %s::{}").format(sql.Identifier(k), sql.SQL(meta.columns[k]))
            for k in meta.key
        )

    async def _insert(self, conn: Conn, meta: TableMeta, row: Row) -> None:
        cols = tuple(c for c in row if c in meta.columns)
        q = self._sql.get(("insert", meta.name, cols))
        if q is None:
            q = sql.SQL("insert into {} ({}) values ({})").format(
                meta.ident,
                sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                sql.SQL(", ").join(
                    sql.SQL("%s::{}").format(sql.SQL(meta.columns[c])) for c in cols
                ),
            )
            self._sql[("insert", meta.name, cols)] = q
        await conn.execute(q, [row[c] for c in cols])

    async def _update(self, conn: Conn, meta: TableMeta, key: list[str | None], row: Row) -> None:
        cols = tuple(c for c in row if c in meta.columns)
        if not cols:
            return
        q = self._sql.get(("update", meta.name, cols))
        if q is None:
            q = sql.SQL("update {} t set {} where {}").format(
                meta.ident,
                sql.SQL(", ").join(
                    sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(meta.columns[c]))
                    for c in cols
                ),
                self._key_where(meta),
            )
            self._sql[("update", meta.name, cols)] = q
        await conn.execute(q, [*(row[c] for c in cols), *key])

    async def _delete(self, conn: Conn, meta: TableMeta, key: list[str | None]) -> None:
        q = self._sql.get(("delete", meta.name))
        if q is None:
            q = sql.SQL("delete from {} t where {}").format(meta.ident, self._key_where(meta))
            self._sql[("delete", meta.name)] = q
        await conn.execute(q, key)


def _deleted_after(deleted: Version | None, remote_time: datetime) -> bool:
    return (
        deleted is not None
        and deleted.committed_at is not None
        and deleted.committed_at >= remote_time
    )


_TOAST = object()


def _values(names: list[str], raw: Any, meta: TableMeta) -> Row:
    """Text values of the columns the target also has (unchanged TOAST kept as a marker)."""
    out: Row = {}
    for name, value in zip(names, raw, strict=True):
        if name not in meta.columns:
            continue
        if value is UNCHANGED_TOAST:
            out[name] = _TOAST
        elif value is None:
            out[name] = None
        else:
            out[name] = bytes(value).decode()
    return out


def _present(row: Row) -> Row:
    """The columns whose value the server sent (not unchanged TOAST)."""
    return {k: v for k, v in row.items() if v is not _TOAST}


def _complete(row: Row | None) -> Row:
    assert row is not None
    return _present(row)
