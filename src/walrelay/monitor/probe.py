"""Read the source cluster's replication health: one :class:`Snapshot` per check.

Its own connection, separate from replication, opened read-only
(``default_transaction_read_only=on``) and issuing only ``SELECT``. A role
with ``pg_monitor`` sees everything; with less, what it cannot see is left
``None`` and said in :attr:`Snapshot.notes` (``pg_ls_waldir()`` needs
``pg_monitor`` or superuser; other sessions' transactions need
``pg_read_all_stats``).

Views read (PostgreSQL 15 docs): ``pg_replication_slots``,
``pg_stat_replication``, ``pg_stat_replication_slots``, ``pg_stat_activity``,
``pg_settings``, ``pg_ls_waldir()``.
https://www.postgresql.org/docs/15/view-pg-replication-slots.html
https://www.postgresql.org/docs/15/monitoring-stats.html
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from walrelay.monitor.walsender_waits import WALSENDER_WAITS

if TYPE_CHECKING:
    from walrelay.monitor.doctor import DiskFacts

__all__ = ["Probe", "ServerState", "SlotState", "Snapshot", "TransactionState", "read_snapshot"]

AsyncConn = psycopg.AsyncConnection[dict[str, Any]]

_SESSION_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=5s -c lock_timeout=1s"

_CURRENT_LSN = (
    "case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end"
)

_SERVER = f"""
select current_setting('server_version_num')::int as server_version_num,
       {_CURRENT_LSN}::text as current_lsn,
       (select case when setting::bigint < 0 then null
                    else setting::bigint * 1024 * 1024 end
          from pg_settings where name = 'max_slot_wal_keep_size') as max_slot_wal_keep_size,
       (select setting::bigint * 1024 * 1024 from pg_settings where name = 'max_wal_size')
         as max_wal_size,
       (select setting from pg_settings where name = 'data_directory') as data_directory,
       current_setting('port') as port,
       extract(epoch from pg_postmaster_start_time())::float8 as postmaster_start
"""

_SLOTS = """
select s.slot_name::text as name, s.slot_type as slot_type, s.plugin::text as plugin,
       s.database::text as database, s.active, s.active_pid, s.temporary, s.wal_status,
       s.safe_wal_size, s.restart_lsn::text as restart_lsn,
       s.confirmed_flush_lsn::text as confirmed_flush_lsn,
       pg_wal_lsn_diff({cur}, s.restart_lsn)::bigint as retained_bytes,
       pg_wal_lsn_diff({cur}, s.confirmed_flush_lsn)::bigint as pending_bytes,
       extract(epoch from now() - (to_jsonb(s) ->> 'inactive_since')::timestamptz)::float8
         as server_inactive_seconds,
       r.state as walsender_state, r.sent_lsn::text as sent_lsn,
       pg_wal_lsn_diff({cur}, r.sent_lsn)::bigint as sent_lag_bytes,
       extract(epoch from r.write_lag)::float8 as write_lag,
       extract(epoch from r.flush_lag)::float8 as flush_lag,
       extract(epoch from r.replay_lag)::float8 as replay_lag,
       {spills}
from pg_replication_slots s
left join pg_stat_replication r on r.pid = s.active_pid
{spill_join}
order by s.slot_name
"""
_SPILL_COLUMNS = (
    "st.spill_txns, st.spill_count, st.spill_bytes, st.stream_txns, st.total_txns, st.total_bytes"
)
_NO_SPILL_COLUMNS = (
    "null::bigint as spill_txns, null::bigint as spill_count, null::bigint as spill_bytes, "
    "null::bigint as stream_txns, null::bigint as total_txns, null::bigint as total_bytes"
)
_SPILL_JOIN = "left join pg_stat_replication_slots st on st.slot_name = s.slot_name"

_OLDEST_TX = """
select pid, usename::text as user, datname::text as database,
       application_name as application, state,
       greatest(extract(epoch from now() - xact_start), 0)::float8 as seconds
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid() and xact_start is not null
order by xact_start
limit 1
"""


@dataclass(frozen=True)
class SlotState:
    name: str
    slot_type: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    temporary: bool
    wal_status: str | None
    safe_wal_size: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None  # current WAL position - restart_lsn
    pending_bytes: int | None  # current WAL position - confirmed_flush_lsn
    server_inactive_seconds: float | None  # PostgreSQL 17+ only
    walsender_state: str | None
    sent_lsn: str | None
    sent_lag_bytes: int | None
    write_lag: float | None
    flush_lag: float | None
    replay_lag: float | None
    spill_txns: int | None
    spill_count: int | None
    spill_bytes: int | None
    stream_txns: int | None
    total_txns: int | None
    total_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TransactionState:
    pid: int
    user: str | None
    database: str | None
    application: str | None
    state: str | None
    seconds: float


@dataclass(frozen=True)
class ServerState:
    server_version_num: int
    current_lsn: str
    max_slot_wal_keep_size: int | None  # bytes; None when unlimited (-1)
    pg_wal_bytes: int | None  # sum of pg_ls_waldir(); None without permission
    disk: DiskFacts | None  # pg_wal's filesystem, only when on this very host
    oldest_transaction: TransactionState | None
    max_wal_size: int | None = None  # bytes

    @property
    def disk_used_percent(self) -> float | None:
        return None if self.disk is None else self.disk.used_percent


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # wall clock
    server: ServerState
    slots: list[SlotState]
    notes: list[str] = field(default_factory=list)  # what could not be read, and why

    def slot(self, name: str) -> SlotState | None:
        for s in self.slots:
            if s.name == name:
                return s
        return None


async def read_snapshot(conn: AsyncConn) -> Snapshot:
    """All the facts of one check, read with ``conn`` (SELECT only)."""
    notes: list[str] = []
    row = await _one(conn, _SERVER)
    version = int(row["server_version_num"])
    cur = _CURRENT_LSN
    if version >= 140000:
        slots_sql = _SLOTS.format(cur=cur, spills=_SPILL_COLUMNS, spill_join=_SPILL_JOIN)
    else:
        slots_sql = _SLOTS.format(cur=cur, spills=_NO_SPILL_COLUMNS, spill_join="")
    cursor = await conn.execute(slots_sql)
    slots = [SlotState(**r) for r in await cursor.fetchall()]
    tx_row = await (await conn.execute(_OLDEST_TX)).fetchone()
    oldest = TransactionState(**tx_row) if tx_row is not None else None
    try:
        wal = await _one(conn, "select coalesce(sum(size), 0)::bigint as b from pg_ls_waldir()")
        pg_wal_bytes: int | None = int(wal["b"])
    except psycopg.errors.InsufficientPrivilege:
        pg_wal_bytes = None
        notes.append("pg_wal size unknown: pg_ls_waldir() needs pg_monitor (or superuser)")
    data_dir = row["data_directory"]
    # The doctor's module only when the monitor first probes (not at start-up).
    from walrelay.monitor.doctor import Setting, wal_disk

    disk, why = await asyncio.to_thread(
        wal_disk,
        Setting(str(data_dir)) if data_dir is not None else None,
        Setting(str(row["port"])),
        float(row["postmaster_start"]),
    )
    if disk is None:
        notes.append(f"pg_wal disk usage unknown: {why}")
    server = ServerState(
        server_version_num=version,
        current_lsn=str(row["current_lsn"]),
        max_slot_wal_keep_size=row["max_slot_wal_keep_size"],
        pg_wal_bytes=pg_wal_bytes,
        disk=disk,
        oldest_transaction=oldest,
        max_wal_size=row["max_wal_size"],
    )
    return Snapshot(time.time(), server, slots, notes)


async def _one(conn: AsyncConn, query: str) -> dict[str, Any]:
    cursor = await conn.execute(query)
    row = await cursor.fetchone()
    assert row is not None, query
    return row


class Probe:
    """A lazily (re)opened read-only connection that reads snapshots."""

    def __init__(self, dsn: str, *, application_name: str = "walrelay-monitor") -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: AsyncConn | None = None

    async def _connect(self) -> AsyncConn:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self._dsn)
        options = " ".join(str(o) for o in (params.get("options"), _SESSION_OPTIONS) if o)
        extra: dict[str, Any] = {"options": options}
        if "application_name" not in params:
            extra["application_name"] = self._application_name
        if "connect_timeout" not in params:
            extra["connect_timeout"] = 5
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, row_factory=dict_row, **extra
        )
        return conn

    async def read(self) -> Snapshot:
        """One snapshot; on a connection error the connection is dropped and
        reopened at the next call (the error is raised)."""
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        try:
            return await read_snapshot(self._conn)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self.close()
            raise

    async def walsender_waits(self) -> list[tuple[int, bool]]:
        """Every walsender's pid and whether it is on CPU (no wait event) now
        (:mod:`walrelay.monitor.walsender_waits`)."""
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        cursor = await self._conn.execute(WALSENDER_WAITS)
        return [(int(r["pid"]), bool(r["on_cpu"])) for r in await cursor.fetchall()]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()
