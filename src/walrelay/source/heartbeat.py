"""Heartbeats: keep the slot advancing, and measure lag, while the publication is quiet.

Why: a slot's ``restart_lsn``/``confirmed_flush_lsn`` only move when the
client confirms a position. If the published tables are idle while other
tables are busy, the walsender decodes (and skips) all that WAL but has
nothing to send; unless the client confirms something, the slot pins every
WAL segment since its last confirmed change and the primary's disk fills.
walrelay has two defences:

1. *idle confirm* (``source.confirm_idle``, default on): with nothing pending,
   the engine confirms the last keepalive's ``wal_end``;
2. *heartbeats* (this module, ``heartbeat:``): every ``interval`` (default
   30 s) a regular (non-replication) connection writes a tiny change that the
   slot *does* stream, so the engine receives a transaction it can confirm
   past, and a timestamp to measure lag with. Either

   - ``pg_logical_emit_message(false, 'walrelay.heartbeat', '{"slot", "run",
     "seq", "at"}')`` (default: no table, nothing to clean up; a
     non-transactional message is decoded at once), or
   - with ``heartbeat.table`` set, an UPDATE of that table's row for this slot
     (``slot text primary key, run text, seq bigint, beat_at timestamptz``),
     for setups that cannot call ``pg_logical_emit_message`` or want the
     beat visible in a table. walrelay creates the table if missing and adds
     it to the publication (it must be published to be streamed).

Heartbeats are never delivered to destinations: the engine hands them to
:meth:`Heartbeat.observe`, which records the lag -- the time from emitting a
beat to the engine receiving it, both on walrelay's own monotonic clock (the
beat's ``run``/``seq`` identify it), so clock skew between hosts does not
enter -- as ``engine.stats.heartbeat_lag`` (seconds). Beats of another
walrelay on the same database (another ``run``) are swallowed too but not
measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

from walrelay import sqltext
from walrelay.config import HeartbeatConfig
from walrelay.errors import SourceSetupError
from walrelay.model import Change

__all__ = ["Heartbeat"]

log = logging.getLogger("walrelay.source.heartbeat")

AConn = psycopg.AsyncConnection[Any]
_MAX_OUTSTANDING = 1000  # beats sent and not (yet) seen, kept for the lag


def _split(qualified: str) -> tuple[str, str]:
    schema, _, name = qualified.partition(".")
    return (schema, name) if name else ("public", schema)


class Heartbeat:
    """Emits heartbeats for one slot and recognises them in the stream."""

    def __init__(
        self,
        config: HeartbeatConfig,
        *,
        dsn: str,
        slot: str,
        publication: str,
        create_publication: bool = True,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.interval = config.interval
        self.prefix = config.prefix
        self.table = config.table
        self.slot = slot
        self.publication = publication
        self.create_publication = create_publication
        self.on_lag = on_lag
        self._dsn = dsn
        self.run_id = secrets.token_hex(6)
        self._seq = 0
        self._sent: dict[int, float] = {}  # seq -> monotonic time it was emitted
        self.sent = 0
        self.received = 0
        self.lag: float | None = None
        self.last_received: float | None = None  # monotonic
        self._table_ident = sql.Identifier(*_split(self.table)) if self.table else None
        # The table as pasteable SQL, for fix texts.
        self._table_sql = ".".join(map(sqltext.ident, _split(self.table))) if self.table else ""
        self._columns: tuple[str, ...] | None = None

    # -- set-up ---------------------------------------------------------------------

    async def prepare(self, conn: AConn) -> None:
        """Table mode: create the table and this slot's row, and make sure the
        publication streams it. Message mode needs nothing."""
        if self.table is None or self._table_ident is None:
            return
        ident = self._table_ident
        try:
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, run text NOT NULL, "
                    "seq bigint NOT NULL, beat_at timestamptz NOT NULL)"
                ).format(ident)
            )
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (slot, run, seq, beat_at) VALUES (%s, '', 0, now()) "
                    "ON CONFLICT (slot) DO NOTHING"
                ).format(ident),
                (self.slot,),
            )
        except psycopg.Error as e:
            raise SourceSetupError(
                f"heartbeat table {self.table}: cannot create it or its row: "
                f"{e.diag.message_primary or e}",
                fix=f"create it as its owner: CREATE TABLE {self._table_sql} "
                "(slot text PRIMARY KEY, run text NOT NULL, seq bigint NOT NULL, "
                "beat_at timestamptz NOT NULL)",
            ) from None
        cur = await conn.execute(
            "select puballtables from pg_publication where pubname = %s", (self.publication,)
        )
        row = await cur.fetchone()
        if row is not None and row[0]:
            return
        schema, name = _split(self.table)
        cur = await conn.execute(
            "select 1 from pg_publication_tables "
            "where pubname = %s and schemaname = %s and tablename = %s",
            (self.publication, schema, name),
        )
        if await cur.fetchone() is not None:
            return
        if not self.create_publication:
            raise SourceSetupError(
                f"heartbeat table {self.table} is not in publication {self.publication}",
                fix=f"ALTER PUBLICATION {sqltext.ident(self.publication)} "
                f"ADD TABLE {self._table_sql}",
            )
        try:
            await conn.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(self.publication), ident
                )
            )
        except psycopg.Error as e:
            raise SourceSetupError(
                f"cannot add heartbeat table {self.table} to publication {self.publication}: "
                f"{e.diag.message_primary or e}",
                fix=f"ALTER PUBLICATION {sqltext.ident(self.publication)} "
                f"ADD TABLE {self._table_sql} (as its owner)",
            ) from None
        log.info("added heartbeat table %s to publication %s", self.table, self.publication)

    # -- emitting ---------------------------------------------------------------------

    async def run(self) -> None:
        """Emit a heartbeat every interval until cancelled; reconnects on errors."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name="walrelay-heartbeat"
                )
                async with conn:
                    while True:
                        await asyncio.sleep(self.interval)  # the heartbeat's period
                        await self.beat(conn)
            except (psycopg.Error, OSError) as e:
                log.warning("heartbeat failed (%s); trying again in %.0fs", e, self.interval)
            except Exception:  # a bug must not end heartbeats silently
                log.exception("heartbeat failed; trying again in %.0fs", self.interval)
            await asyncio.sleep(self.interval)  # the next beat, on a new connection

    async def beat(self, conn: AConn) -> None:
        """Emit one heartbeat on ``conn`` (autocommit)."""
        self._seq += 1
        seq = self._seq
        if len(self._sent) >= _MAX_OUTSTANDING:
            self._sent.pop(next(iter(self._sent)))
        self._sent[seq] = time.monotonic()
        if self._table_ident is None:
            content = orjson.dumps(
                {
                    "slot": self.slot,
                    "run": self.run_id,
                    "seq": seq,
                    "at": datetime.now(UTC).isoformat(),
                }
            ).decode()
            await conn.execute(
                "select pg_logical_emit_message(false, %s, %s)", (self.prefix, content)
            )
        else:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} AS h (slot, run, seq, beat_at) "
                    "VALUES (%s, %s, %s, clock_timestamp()) ON CONFLICT (slot) DO UPDATE "
                    "SET run = excluded.run, seq = excluded.seq, beat_at = excluded.beat_at"
                ).format(self._table_ident),
                (self.slot, self.run_id, seq),
            )
        self.sent += 1

    # -- receiving --------------------------------------------------------------------

    def is_heartbeat_table(self, qualified_name: str) -> bool:
        return self.table is not None and qualified_name == self.table

    def observe(self, change: Change) -> bool:
        """True when ``change`` is a heartbeat (then it must not be delivered);
        measures the lag when it is one of ours."""
        if change.op == "message":
            if change.prefix != self.prefix:
                return False
            run, seq = self._from_message(change.content or b"")
        else:
            rel = change.relation
            if rel is None or not self.is_heartbeat_table(rel.qualified_name):
                return False
            run, seq = self._from_row(change)
        self.received += 1
        now = time.monotonic()
        self.last_received = now
        if run == self.run_id and seq is not None:
            sent = self._sent.pop(seq, None)
            for older in [s for s in self._sent if s < seq]:
                del self._sent[older]
            if sent is not None:
                self.lag = max(0.0, now - sent)
                if self.on_lag is not None:
                    self.on_lag(self.lag)
        return True

    def _from_message(self, content: bytes) -> tuple[str | None, int | None]:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            doc = orjson.loads(content)
            if isinstance(doc, dict) and doc.get("slot") == self.slot:
                return str(doc.get("run")), int(doc["seq"])
        return None, None

    def _from_row(self, change: Change) -> tuple[str | None, int | None]:
        rel = change.relation
        row = change.new
        if rel is None or row is None:
            return None, None
        values = {c.name: v for c, v in zip(rel.columns, row, strict=False)}
        slot, run, seq = values.get("slot"), values.get("run"), values.get("seq")
        if not isinstance(slot, bytes) or slot.decode() != self.slot:
            return None, None
        with contextlib.suppress(ValueError, AttributeError):
            return (run.decode() if isinstance(run, bytes) else None), int(seq)  # type: ignore[arg-type]
        return None, None
