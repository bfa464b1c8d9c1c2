"""Hot standby: one walrelay streams a slot, others wait to take over.

Every ``walrelay run`` holds a session-level advisory lock in the state
database, keyed by the state schema and the slot, for as long as it streams
(:class:`HaLock`). The slot's own exclusivity (one walsender per slot) is the
second fence.

* ``ha: active`` (the default) takes the lock at start, or stops with a clear
  error when another walrelay holds it.
* ``ha: standby`` (``walrelay run --standby``) waits for the lock, polling
  every ``POLL`` seconds, and then starts as an active one would.

The holder pings its lock session every ``PING`` seconds. The session is
opened with ``idle_session_timeout = LEASE``: if the holder dies (SIGKILL:
the socket closes at once) or its link to the state database is cut (the
pings stop reaching the server), PostgreSQL ends the session and the lock
goes to a standby within ``LEASE`` seconds. A holder whose ping fails for
``FENCE`` seconds (less than ``LEASE``) stops streaming on its own first
(:class:`HaLockLost`) and waits for the lock again, so two never stream at
once. Having the lock, a walrelay ends a walsender still streaming the slot
for a walrelay that lost it (the server notices a cut client only after
``wal_sender_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from walrelay.dsn import connect_error, scrub
from walrelay.errors import SlotBusy, WalrelayError

__all__ = ["FENCE", "LEASE", "PING", "POLL", "HaLock", "HaLockLost"]

log = logging.getLogger("walrelay.engine.standby")

POLL = 0.5
PING = 1.0
FENCE = 3.0
LEASE = 6.0

# The two-int advisory lock space: "WALS", then hashtext(schema.slot).
_LOCK_CLASS = 0x57414C53

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class HaLockLost(WalrelayError):
    """The HA lock's session in the state database could not be reached."""


class HaLock:
    """The state database's advisory lock that says which walrelay streams a slot."""

    def __init__(
        self, dsn: str, *, schema: str, slot: str, where: str = "the state database"
    ) -> None:
        self._dsn = dsn
        # What the DSN is, for messages: "the source" when state.dsn is not set.
        self._where = where
        self.slot = slot
        self._name = f"{schema}.{slot}"
        self._conn: Conn | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def _connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            application_name="walrelay-ha",
            connect_timeout=max(2, int(FENCE)),
            # The lease: a holder that stops pinging loses the session, and the lock.
            options=f"-c idle_session_timeout={int(LEASE * 1000)}",
        )

    async def try_acquire(self) -> bool:
        """Take the lock if it is free (True); keep the session while held."""
        conn = await self._connect()
        try:
            cur = await conn.execute(
                "select pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, self._name)
            )
            row = await cur.fetchone()
        except BaseException:
            await _close(conn)
            raise
        if row is None or not row[0]:
            await _close(conn)
            return False
        self._conn = conn
        return True

    async def holder(self) -> str:
        """Who holds the lock, for messages: 'PID n (address)'."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=2
            ) as conn:
                cur = await conn.execute(
                    "select l.pid, coalesce(host(a.client_addr), 'local') from pg_locks l "
                    "left join pg_stat_activity a on a.pid = l.pid "
                    "where l.locktype = 'advisory' and l.granted and l.classid = %s "
                    "and l.objid = hashtext(%s)::oid and l.objsubid = 2",
                    (_LOCK_CLASS, self._name),
                )
                row = await cur.fetchone()
        except psycopg.Error:
            return "another walrelay"
        return "another walrelay" if row is None else f"the walrelay of PID {row[0]} ({row[1]})"

    async def acquire_or_fail(self, source_dsn: str) -> None:
        """``ha: active``: take the lock now or stop with what to do."""
        try:
            if await self.try_acquire():
                return
        except psycopg.Error as e:
            raise connect_error(
                f"{self._where} (slot {self.slot}'s HA lock)",
                self._dsn,
                e,
                fix="check state.dsn (or source.dsn), the server and the password",
            ) from None
        walsender = await _walsender(source_dsn, self.slot)
        streaming = f"already streaming to PID {walsender}" if walsender else "held"
        raise SlotBusy(
            f"replication slot {self.slot} is {streaming}: another walrelay holds its HA lock "
            f"in the state database ({await self.holder()})",
            fix="stop the other walrelay first, or run this one with --standby (ha: standby) "
            "to take over when it stops",
        )

    async def wait(self, stop: asyncio.Event) -> bool:
        """``ha: standby``: wait for the lock; False when stopped first."""
        announced = False
        failures = 0
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
                failures = 0
            except psycopg.Error as e:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "standby: cannot reach the state database to check slot %s's HA lock: %s",
                        self.slot,
                        " ".join(str(e).split()),
                    )
            if not announced:
                announced = True
                log.info(
                    "standby: slot %s is streamed by %s; waiting to take over",
                    self.slot,
                    await self.holder(),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL)
        return False

    async def hold(self, on_lost: Callable[[WalrelayError], None]) -> None:
        """Ping the lock's session until cancelled; call ``on_lost`` once when
        it cannot be reached for ``FENCE`` seconds (or is gone)."""
        conn = self._conn
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        error = "no answer"
        while True:
            await asyncio.sleep(PING)
            # Not asyncio.timeout: cancelling a psycopg query first sends a cancel
            # request over the (maybe dead) link and waits for it, seconds longer
            # than the fence allows.
            ping = asyncio.ensure_future(conn.execute("select 1"))
            left = max(0.1, FENCE - (loop.time() - last_ok))
            await asyncio.wait({ping}, timeout=left)
            if ping.done() and not ping.cancelled() and ping.exception() is None:
                last_ok = loop.time()
                continue
            if ping.done() and not ping.cancelled():
                error = scrub(str(ping.exception()), self._dsn)
            else:
                conn.pgconn.finish()  # the pending ping fails at once
                ping.add_done_callback(_consume)
                ping.cancel()
            break
        self._conn = None
        await _close(conn)
        on_lost(
            HaLockLost(
                f"lost slot {self.slot}'s HA lock in the state database ({error}): stopped "
                "streaming so that a standby can take over; waiting to get the lock back",
                fix="check the link to the state database",
            )
        )

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)


async def _walsender(dsn: str, slot: str) -> int | None:
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=2
        ) as conn:
            cur = await conn.execute(
                "select active_pid from pg_replication_slots where slot_name = %s", (slot,)
            )
            row = await cur.fetchone()
    except psycopg.Error:
        return None
    return None if row is None or row[0] is None else int(row[0])


async def end_stale_walsender(conn: Conn, slot: str) -> int | None:
    """With the lock held: end a walsender still streaming ``slot`` to a
    walrelay (one that lost the lock); returns its PID."""
    cur = await conn.execute(
        "select s.active_pid, pg_terminate_backend(s.active_pid) "
        "from pg_replication_slots s join pg_stat_activity a on a.pid = s.active_pid "
        "where s.slot_name = %s and a.application_name = 'walrelay'",
        (slot,),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _close(conn: Conn) -> None:
    """Close without hanging on a dead link."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await conn.close()
    if not conn.closed:
        conn.pgconn.finish()
