"""Slot samples in walrelay's state schema: the doctor's memory between runs.

:func:`record_samples` writes what a doctor run saw of every slot
(:mod:`walrelay.state.slot_samples`) and returns the previous samples:
how long a slot has been
inactive before PostgreSQL 17, and whether a slot's WAL grew while its
published tables were quiet. It is the doctor's only write, on a connection
of its own; when it cannot write (a read-only role, a standby) the doctor
says so and goes on.

:class:`SlotSampler` does the same from a running engine: every
``monitor.samples.interval`` the monitor hands it the snapshot it just read
and it records every slot (retained WAL, confirmed-flush lag,
``safe_wal_size``, ``wal_status``) and prunes samples older than
``monitor.samples.retention``, so the doctor sees how long a slot has been
inactive and how fast its WAL grows without anyone having run it. A write
that fails is a warning in the log, never a stop: it runs as a task of its
own, on a short-lived autocommit connection to the source, in one short
transaction (``idle_in_transaction_session_timeout`` set, so not even a
stalled walrelay can hold it open).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from walrelay.config import masked_dsn
from walrelay.state.migrations import migrate
from walrelay.state.slot_samples import (
    HistoryPoint,
    SlotObservation,
    SlotSample,
    record,
    record_async,
)

if TYPE_CHECKING:
    from walrelay.config import SlotSamplesConfig

__all__ = ["HistoryPoint", "Sampling", "SlotObservation", "SlotSampler", "record_samples"]

log = logging.getLogger("walrelay.monitor")


@dataclass
class Sampling:
    """The previous run's samples, this run's published write count, and per
    slot how long the samples have seen it inactive (0: this run was first)."""

    previous: dict[str, SlotSample] = field(default_factory=dict)
    published_writes: int = 0
    inactive_seconds: dict[str, float] = field(default_factory=dict)


async def _migrate(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name="walrelay doctor"
    ) as conn:
        await migrate(conn, schema)


def record_samples(
    dsn: str, schema: str, observations: Sequence[SlotObservation], published_writes: int
) -> Sampling | str:
    """Record this run's samples; the :class:`Sampling`, or why it could not."""
    try:
        # The state migrations are async; the doctor is not (and may be called
        # from code that runs an event loop): run them on a thread of their own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _migrate(dsn, schema)).result()
        with psycopg.connect(
            dsn, autocommit=True, application_name="walrelay doctor", connect_timeout=10
        ) as conn:
            previous, inactive = record(conn, schema, observations)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot write {schema}.slot_samples on {masked_dsn(dsn)}: {first}"
    return Sampling(
        previous, published_writes, {k: v for k, v in inactive.items() if v is not None}
    )


class SlotLike(Protocol):
    """A slot as the monitor's probe reads it (walrelay.monitor.probe.SlotState)."""

    @property
    def name(self) -> str: ...
    @property
    def database(self) -> str | None: ...
    @property
    def active(self) -> bool: ...
    @property
    def temporary(self) -> bool: ...
    @property
    def wal_status(self) -> str | None: ...
    @property
    def safe_wal_size(self) -> int | None: ...
    @property
    def confirmed_flush_lsn(self) -> str | None: ...
    @property
    def retained_bytes(self) -> int | None: ...
    @property
    def pending_bytes(self) -> int | None: ...


# Inserts + updates + deletes of the published tables of the connected
# database: what the doctor sums over its published tables (doctor._TABLES).
_PUBLISHED_WRITES = """
select current_database()::text, pg_is_in_recovery(),
       (select coalesce(sum(st.n_tup_ins + st.n_tup_upd + st.n_tup_del), 0)::bigint
        from (select distinct schemaname, tablename from pg_publication_tables) pt
        join pg_stat_user_tables st
          on st.schemaname = pt.schemaname and st.relname = pt.tablename)
"""

_SESSION_OPTIONS = (
    "-c statement_timeout=5s -c lock_timeout=1s -c idle_in_transaction_session_timeout=10s"
)

# A failing write is logged the first time and then every this many failures.
_LOG_EVERY = 10


class SlotSampler:
    """Records the monitor's snapshots of the source's slots every ``interval``.

    :meth:`offer` is called by the monitor after each successful check; it
    starts a write when one is due and none is running, and returns at once.
    """

    def __init__(self, dsn: str, schema: str, config: SlotSamplesConfig) -> None:
        self._dsn = dsn
        self.schema = schema
        self.interval = config.interval
        self.retention = config.retention
        self.samples_total = 0
        self.pruned_total = 0
        self.failures_total = 0
        self.last_error: str | None = None
        # Per slot, how long the samples (kept across restarts) have seen it inactive.
        self.inactive_seconds: dict[str, float] = {}
        self._last_start: float | None = None
        self._migrated = False
        self._task: asyncio.Task[None] | None = None
        self._standby_logged = False

    def offer(self, current_lsn: str, slots: Sequence[SlotLike]) -> None:
        now = time.monotonic()
        if self._task is not None and not self._task.done():
            return
        if self._last_start is not None and now - self._last_start < self.interval:
            return
        self._last_start = now
        self._task = asyncio.get_running_loop().create_task(
            self._write(current_lsn, slots), name="walrelay-slot-samples"
        )

    async def _write(self, current_lsn: str, slots: Sequence[SlotLike]) -> None:
        try:
            async with asyncio.timeout(30):
                await self.write(current_lsn, slots)
        except Exception as e:  # never stops the engine: a warning, then retried next time
            self.failures_total += 1
            self.last_error = " ".join(f"{type(e).__name__}: {e}".split()) or type(e).__name__
            if self.failures_total % _LOG_EVERY == 1:
                log.warning(
                    "monitor: cannot record slot samples in %s.slot_sample_history on %s: %s "
                    "(replication goes on; walrelay doctor has no fresh history meanwhile)",
                    self.schema,
                    masked_dsn(self._dsn),
                    self.last_error,
                )

    async def write(self, current_lsn: str, slots: Sequence[SlotLike]) -> None:
        """One sample of every (non-temporary) slot, and the pruning; ``current_lsn``
        is the WAL position read with the slots."""
        async with await self._connect() as conn:
            cur = await conn.execute(_PUBLISHED_WRITES)
            row = await cur.fetchone()
            assert row is not None
            database, standby, writes = str(row[0]), bool(row[1]), int(row[2])
            if standby:
                if not self._standby_logged:
                    log.info("monitor: the source is a standby; slot samples are not recorded")
                    self._standby_logged = True
                return
            if not self._migrated:
                await migrate(conn, self.schema)
                self._migrated = True
            observations = [
                SlotObservation(
                    slot=s.name,
                    database=s.database,
                    active=s.active,
                    confirmed_flush_lsn=s.confirmed_flush_lsn,
                    wal_lsn=current_lsn,
                    published_writes=writes if s.database == database else None,
                    wal_status=s.wal_status,
                    retained_bytes=s.retained_bytes,
                    confirmed_lag_bytes=s.pending_bytes,
                    safe_wal_size=s.safe_wal_size,
                )
                for s in slots
                if not s.temporary
            ]
            pruned, inactive = await record_async(
                conn,
                self.schema,
                observations,
                recorded_by="engine",
                retention_seconds=self.retention,
            )
        self.inactive_seconds = {k: v for k, v in inactive.items() if v is not None}
        self.samples_total += 1
        self.pruned_total += pruned
        self.last_error = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self._dsn)
        options = " ".join(str(o) for o in (params.get("options"), _SESSION_OPTIONS) if o)
        extra: dict[str, Any] = {"options": options}
        if "application_name" not in params:
            extra["application_name"] = "walrelay-samples"
        if "connect_timeout" not in params:
            extra["connect_timeout"] = 5
        return await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **extra)

    async def close(self) -> None:
        """Wait for a write under way (bounded by its timeouts)."""
        task, self._task = self._task, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=10)
        if not task.done():
            task.cancel()
