"""Backfills, run by the engine: chunks read between watermarks, through the Router.

The protocol (watermarks, chunks, what a change inside a window does) is
told in :mod:`walrelay.source.backfill`; the request table is
:mod:`walrelay.state.backfills`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql

from walrelay import failpoints
from walrelay.model import Begin, Change, Event, Lsn, RawTuple, Relation
from walrelay.source.encoding import is_sql_ascii
from walrelay.source.snapshot import (
    Progress,
    connect_reader,
    estimate_rows,
    format_progress,
    relation_for,
    select_list,
    table_ident,
)

if TYPE_CHECKING:
    from walrelay.pipeline.scheduler import Destination

from walrelay.engine.snapshot import Host
from walrelay.source.backfill import WATERMARK_PREFIX
from walrelay.state.backfills import BackfillRequest, next_backfill, update_backfill
from walrelay.state.migrations import migrate

log = logging.getLogger("walrelay.engine.backfills")


@dataclass
class _Chunk:
    backfill_id: int
    number: int
    table: str
    destination: str
    rel: Relation
    rows: list[RawTuple] | None = None
    is_open: bool = False
    truncated: bool = False
    changed: set[str] = field(default_factory=set)
    done: asyncio.Future[Lsn | None] | None = None
    emitted: int = 0


class BackfillManager:
    """The engine's side of backfills: runs requests and handles watermarks."""

    def __init__(self, engine: Host) -> None:
        self.engine = engine
        # Tables with an open watermark window: the engine's _route checks this
        # set (cheaply) and calls :meth:`observe` only while it is not empty.
        self.watch: set[str] = set()
        # (backfill id, chunk number, token): the token is new for every attempt, so
        # the watermarks of an attempt before a restart, replayed, never match.
        self._chunks: dict[tuple[int, int, str], _Chunk] = {}

    # -- called by the engine's read loop (no awaits) ---------------------------

    def on_watermark(
        self, change: Change, begin: Begin, seq: int
    ) -> list[tuple[Destination, Event]]:
        """A watermark message at ``seq`` of ``begin``'s transaction. Returns the
        chunk's read events (seq ``seq + 1`` ...) at a high watermark, else []."""
        try:
            mark = orjson.loads(change.content or b"")
            key = (int(mark["backfill"]), int(mark["chunk"]), str(mark.get("token", "")))
            kind = mark["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed %s message", WATERMARK_PREFIX)
            return []
        chunk = self._chunks.get(key)
        if chunk is None:
            return []  # a replay of a chunk already finished, or another engine's
        if kind == "low":
            if not chunk.is_open:
                chunk.is_open = True
                self._rewatch()
            return []
        if kind != "high" or chunk.done is None or chunk.done.done():
            return []
        if not chunk.is_open or chunk.rows is None:
            # The low watermark was not seen (replay started past it): redo the chunk.
            chunk.done.set_result(None)
            return []
        chunk.is_open = False
        self._rewatch()
        dest = self.engine.destinations.get(chunk.destination)
        out: list[tuple[Destination, Event]] = []
        if dest is None or chunk.truncated:
            chunk.done.set_result(begin.commit_lsn)
            return out
        router = self.engine.router
        assert router is not None
        build = router.build
        shape = router.shape
        changed = chunk.changed
        n = seq + 1
        for row in chunk.rows:
            event = build(begin, Change(op="read", relation=chunk.rel, new=row), n)
            if event.keys[0] in changed:
                continue  # the stream carries a newer version of this row
            shaped = shape(dest.name, event)
            if shaped is None:
                continue
            out.append((dest, shaped))
            n += 1
        chunk.emitted = len(out)
        chunk.done.set_result(begin.commit_lsn)
        return out

    def observe(self, change: Change, event: Event | None, dests: list[Destination]) -> None:
        """A change routed while a window is open on its table (or a truncate)."""
        for chunk in self._chunks.values():
            if not chunk.is_open:
                continue
            if change.op == "truncate":
                if any(r.qualified_name == chunk.table for r in change.relations):
                    chunk.truncated = True
                continue
            if event is None or event.table != chunk.table:
                continue
            if any(d.name == chunk.destination for d in dests):
                chunk.changed.update(event.keys)

    def _rewatch(self) -> None:
        self.watch.clear()
        self.watch.update(c.table for c in self._chunks.values() if c.is_open)

    # -- the request loop -------------------------------------------------------------

    async def run(self) -> None:
        """Poll for requests and run them one at a time, until cancelled."""
        cfg = self.engine.config
        interval = cfg.source.backfill_poll_interval
        migrated = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    cfg.state_dsn, autocommit=True
                ) as conn:
                    if not migrated:
                        await migrate(conn, cfg.state.schema)
                        migrated = True
                    request = await self._next_request(conn)
                if request is not None:
                    await self._run_request(request)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("backfill: %s", e)
            await asyncio.sleep(interval)  # polling the request table

    async def _next_request(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]]
    ) -> BackfillRequest | None:
        cfg = self.engine.config
        names = [d.name for d in cfg.destinations]
        return await next_backfill(conn, cfg.state.schema, cfg.source.slot, names)

    async def _set(self, request_id: int, **values: Any) -> None:
        cfg = self.engine.config
        await update_backfill(cfg.state_dsn, cfg.state.schema, request_id, **values)

    async def _run_request(self, req: BackfillRequest) -> None:
        engine = self.engine
        info = engine.source_info
        tinfo = info.tables.get(req.table) if info is not None else None
        if tinfo is None:
            await self._set(req.id, status="failed", error=f"{req.table} is not in source.tables")
            log.error("backfill %d: %s is not in source.tables", req.id, req.table)
            return
        dsn = engine.config.source.dsn_value
        async with await connect_reader(dsn, autocommit=True) as conn:
            rel = await relation_for(conn, tinfo)
            estimate = await estimate_rows(conn, tinfo.oid)
            progress = Progress(
                "backfill",
                req.table,
                (req.destination,),
                rows_estimated=estimate,
                rows_done=req.rows_done,
                backfill_id=req.id,
            )
            engine.progress[f"backfill:{req.id}"] = progress
            await self._set(
                req.id,
                status="running",
                rows_estimated=estimate,
                started_at=datetime.now(UTC),
            )
            log.info(
                "backfill %d of %s to %s%s",
                req.id,
                req.table,
                req.destination,
                f" from key {req.cursor}" if req.cursor else "",
            )
            keys = tinfo.key_columns
            key_idx = [i for k in keys for i, c in enumerate(rel.columns) if c.name == k]
            # Qualified: a bare name in ORDER BY would mean the ::text output column.
            key_sql = sql.SQL(", ").join(sql.Identifier("_r", k) for k in keys)
            base = sql.SQL("select {cols} from {t} as _r").format(
                cols=select_list(rel, raw=is_sql_ascii(conn)), t=table_ident(rel)
            )
            cursor = req.cursor
            chunks = req.chunks_done
            rows_done = req.rows_done
            started = time.monotonic()
            rows_this_run = 0
            last_log = started
            try:
                while True:
                    conds: list[sql.Composable] = []
                    params: list[Any] = []
                    if cursor is not None:
                        conds.append(
                            sql.SQL("({}) > ({})").format(
                                key_sql, sql.SQL(", ").join(sql.Placeholder() * len(cursor))
                            )
                        )
                        params.extend(cursor)
                    if req.where:
                        conds.append(sql.SQL("(") + sql.SQL(req.where) + sql.SQL(")"))
                    query = base
                    if conds:
                        query = sql.SQL("{} where {}").format(base, sql.SQL(" and ").join(conds))
                    query = sql.SQL("{} order by {} limit {}").format(
                        query, key_sql, sql.Literal(req.chunk_size)
                    )
                    rows, hw_lsn = await self._chunk(conn, req, rel, chunks, query, params)
                    if rows is None:
                        continue  # redo the same chunk
                    if not rows:
                        break
                    if hw_lsn is not None:
                        await engine.tracker.wait_confirmed(hw_lsn + 1)
                    last = rows[-1]
                    cursor = [bytes(last[i]).decode() for i in key_idx]  # type: ignore[arg-type]
                    chunks += 1
                    rows_done += len(rows)
                    rows_this_run += len(rows)
                    progress.rows_done = rows_done
                    await self._set(
                        req.id,
                        cursor=orjson.dumps(cursor).decode(),
                        rows_done=rows_done,
                        chunks_done=chunks,
                    )
                    failpoints.hit(failpoints.BACKFILL_AFTER_CURSOR)
                    now = time.monotonic()
                    if now - last_log >= 5.0:
                        last_log = now
                        log.info("%s", format_progress(progress))
                    if len(rows) < req.chunk_size:
                        break
                    if req.rate:
                        ahead = rows_this_run / req.rate - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)  # the rate limit
            except asyncio.CancelledError:
                progress.state = "interrupted"
                raise
            except Exception as e:
                progress.finish("failed")
                await self._set(req.id, status="failed", error=str(e))
                log.error("backfill %d failed: %s", req.id, e)
                return
        progress.finish()
        await self._set(req.id, status="done", finished_at=datetime.now(UTC))
        log.info("backfill %d done: %s", req.id, format_progress(progress))

    async def _chunk(
        self,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        req: BackfillRequest,
        rel: Relation,
        number: int,
        query: sql.Composed,
        params: list[Any],
    ) -> tuple[list[RawTuple] | None, Lsn | None]:
        """Low watermark, read, high watermark; wait until the stream emitted it.

        Returns (rows read, high watermark commit LSN); rows None: redo the chunk.
        """
        token = secrets.token_hex(8)
        key = (req.id, number, token)
        loop = asyncio.get_running_loop()
        chunk = _Chunk(req.id, number, req.table, req.destination, rel, done=loop.create_future())
        self._chunks[key] = chunk
        try:
            await self._emit(conn, req.id, number, token, "low")
            # READ ONLY: the operator's --where runs here; a function it calls
            # must not write (the watermarks are emitted outside it).
            async with conn.transaction():
                await conn.execute("set transaction read only")
                cur = await conn.execute(query, params)
                rows: list[RawTuple] = await cur.fetchall()
            if not rows:
                return [], None
            chunk.rows = rows
            await self._emit(conn, req.id, number, token, "high")
            assert chunk.done is not None
            hw_lsn = await chunk.done
            if hw_lsn is None:
                return None, None
            return rows, hw_lsn
        finally:
            self._chunks.pop(key, None)
            self._rewatch()

    async def _emit(
        self,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        bid: int,
        number: int,
        token: str,
        kind: str,
    ) -> None:
        mark = {"backfill": bid, "chunk": number, "token": token, "kind": kind}
        content = orjson.dumps(mark).decode()
        await conn.execute(
            "select pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, content)
        )
