"""The replication connection: psycopg 3.3 COPY BOTH driven from asyncio.

libpq keeps doing what it is good at (TLS, SCRAM, passfiles, service files);
we only use its low-level ``pgconn`` copy calls, non-blocking, with the
socket registered on the event loop. See the PostgreSQL docs, "Streaming
Replication Protocol" (START_REPLICATION, XLogData, Primary keepalive and
Standby status update messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import Final, Protocol

import psycopg
from psycopg import pq, sql

from walrelay.model import Lsn, format_lsn
from walrelay.source.encoding import raw_bytes_if_sql_ascii
from walrelay.source.types import SESSION_OPTIONS

log = logging.getLogger("walrelay.source.stream")

_PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds
_U64 = struct.Struct("!Q")
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")


XLOGDATA: Final = 0x77  # 'w': Int64 data start, Int64 wal end, Int64 time, message
KEEPALIVE: Final = 0x6B  # 'k': Int64 wal end, Int64 time, Byte1 reply requested
XLOGDATA_HEADER: Final = 25  # the pgoutput message starts at this offset

Frame = bytes
"""One CopyData message as the server sent it, unparsed (one allocation per
message is all the hot path can afford): ``frame[0]`` is XLOGDATA or
KEEPALIVE; see :func:`xlogdata_start` and :func:`parse_keepalive`."""


def xlogdata_start(frame: bytes) -> Lsn:
    return int(_U64.unpack_from(frame, 1)[0])


def parse_keepalive(frame: bytes) -> tuple[Lsn, bool]:
    """(wal_end, reply_requested) of a keepalive frame."""
    end, _, reply = _KEEPALIVE.unpack_from(frame, 1)
    return int(end), bool(reply)


class ReplicationConnectionLost(Exception):
    """The replication connection dropped; the engine reconnects with backoff."""


class ReplicationSource(Protocol):
    """What the engine needs from a replication connection (swappable)."""

    async def start(self, slot: str, start_lsn: Lsn, options: dict[str, str]) -> None: ...

    async def read_frames(self) -> list[Frame]: ...

    def send_status(self, flushed: Lsn, *, reply: bool = False) -> None: ...

    def wake(self) -> None:
        """Make a pending :meth:`read_frames` return now (possibly empty)."""

    async def close(self) -> None: ...


def _describe(error: psycopg.Error) -> str:
    """The server's message with its detail (an invalidated slot says why there)."""
    diag = error.diag
    primary = diag.message_primary
    if not primary:
        return str(error).strip()
    return f"{primary} ({diag.message_detail})" if diag.message_detail else primary


def _copy_end_error(pgconn: pq.abc.PGconn) -> str:
    """The error the server ended the COPY with, read from the pending result."""
    try:
        if pgconn.is_busy():
            pgconn.consume_input()
            if pgconn.is_busy():
                return ""
        result = pgconn.get_result()
    except psycopg.OperationalError:
        return ""
    if result is None or result.status != pq.ExecStatus.FATAL_ERROR:
        return ""
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    detail = result.error_field(pq.DiagnosticField.MESSAGE_DETAIL)
    if not primary:
        return result.get_error_message(encoding="utf-8").strip()
    text = primary.decode("utf-8", "replace")
    if detail:
        text += f" ({detail.decode('utf-8', 'replace')})"
    return text


def _now_pg_us() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_OFFSET_US


class PsycopgReplicationStream:
    """One replication session. Not reusable after :meth:`close`."""

    def __init__(self, dsn: str, *, application_name: str = "walrelay") -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._readable: asyncio.Event = asyncio.Event()
        self._fd: int | None = None
        self._woken = False
        self.backend_pid: int | None = None

    async def start(self, slot: str, start_lsn: Lsn, options: dict[str, str]) -> None:
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn,
                replication="database",
                autocommit=True,
                application_name=self._application_name,
                # pgoutput prints values with this session's settings: the
                # ones the type converters assume win over ALTER DATABASE/ROLE.
                options=SESSION_OPTIONS,
            )
            self.backend_pid = self._conn.pgconn.backend_pid
            await raw_bytes_if_sql_ascii(self._conn)
            opts = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                for k, v in options.items()
            )
            # START_REPLICATION is a replication command: the LSN is not a literal.
            query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
                sql.Identifier(slot), sql.SQL(format_lsn(start_lsn)), opts
            )
            cur = self._conn.cursor()
            await cur.execute(query)
        except psycopg.Error as e:
            # Also what the server refuses (slot gone or invalidated): the
            # engine tells a fatal message from a passing outage.
            await self.close()
            raise ReplicationConnectionLost(_describe(e)) from e
        except BaseException:
            await self.close()
            raise
        pgconn = self._conn.pgconn
        if cur.pgresult is None or cur.pgresult.status != pq.ExecStatus.COPY_BOTH:
            await self.close()
            raise RuntimeError("START_REPLICATION did not enter COPY BOTH mode")
        pgconn.nonblocking = 1
        self._fd = pgconn.socket
        asyncio.get_running_loop().add_reader(self._fd, self._readable.set)

    async def read_frames(self) -> list[Frame]:
        """Every frame libpq has buffered; waits on the socket when there is none."""
        conn = self._conn
        if conn is None:
            raise ReplicationConnectionLost("not started")
        pgconn = conn.pgconn
        frames: list[Frame] = []
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.OperationalError as e:
                raise ReplicationConnectionLost(str(e)) from e
            if nbytes > 0:
                frames.append(bytes(data))
                if len(frames) >= 4096:
                    return frames
                continue
            if nbytes == 0:
                if frames:
                    return frames
                if self._take_wake():
                    return frames
                self._readable.clear()
                await self._readable.wait()
                if self._take_wake():
                    return frames
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as e:
                    raise ReplicationConnectionLost(str(e)) from e
                continue
            # -1: the server ended the COPY (its error, if any, is in the next
            # result: a dropped publication names itself there); -2: error.
            msg = _copy_end_error(pgconn) or pgconn.get_error_message(encoding="utf-8")
            raise ReplicationConnectionLost(msg.strip() or "replication stream ended")

    def _take_wake(self) -> bool:
        woken, self._woken = self._woken, False
        return woken

    def wake(self) -> None:
        self._woken = True
        self._readable.set()

    def send_status(self, flushed: Lsn, *, reply: bool = False) -> None:
        """Standby status update: written = flushed = applied = ``flushed``."""
        conn = self._conn
        if conn is None:
            return
        msg = _STATUS.pack(b"r", flushed, flushed, flushed, _now_pg_us(), 1 if reply else 0)
        pgconn = conn.pgconn
        try:
            if pgconn.put_copy_data(msg) != 1:
                log.debug("status update deferred: libpq output buffer full")
            pgconn.flush()
        except psycopg.OperationalError as e:
            log.warning("could not send status update: %s", e)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if self._fd is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        self._readable.set()
        if conn is not None:
            try:
                # Let a last status update leave before the socket closes.
                for _ in range(100):
                    if conn.pgconn.flush() == 0:
                        break
                    await asyncio.sleep(0.01)
            except psycopg.OperationalError:
                pass
            with contextlib.suppress(psycopg.Error):  # closing a broken connection
                await conn.close()
