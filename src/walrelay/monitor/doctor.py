"""``walrelay doctor``: a database team's review of a cluster for logical-replication CDC.

Read only, by construction: the session is opened with
``-c default_transaction_read_only=on`` (checked before anything runs) and
only issues ``SELECT``. It works in two steps so the judgement can be tested
without a server:

1. :func:`gather` reads :class:`Facts` from the catalogs and statistics views
   (``pg_settings``, ``pg_replication_slots``, ``pg_stat_replication_slots``,
   ``pg_publication*``, ``pg_stat_activity``, ``pg_prepared_xacts``) and, when
   the doctor runs on the database host itself, the free space of ``pg_wal``.
2. :func:`diagnose` turns the facts into :class:`Finding` s, each with a
   stable ``code``, a :class:`~walrelay.monitor.thresholds.Severity`, the
   object it is about, a message and the SQL or setting that fixes it.

Scope: publications and published tables are those of the ``--dsn``
database; settings, slots, WAL senders and open transactions are
cluster-wide (a stuck slot of any database fills the same disk).

Exit codes say the worst severity found: 0 nothing above info, 1 warn,
3 page, 4 error; 2 when the doctor could not connect or read the catalogs
(as every walrelay command does for a setup it cannot use).

Before PostgreSQL 17 the server does not say since when a slot is inactive:
each run records what it saw in walrelay's state schema
(:mod:`walrelay.state.slot_samples`, see :mod:`walrelay.monitor.sampling`)
so the next run knows how long a slot has been inactive, and whether its
retained WAL grew while its published tables were quiet. That is the one
write the doctor makes, on a connection of its own (``--no-record``: none).
A running engine records the same samples every ``monitor.samples.interval``
and keeps their history; from it the doctor estimates how fast each slot's
retained WAL grows and when it would be lost or fill the disk
(:mod:`walrelay.monitor.wal_growth`).

PostgreSQL documentation for what is checked:
https://www.postgresql.org/docs/15/logical-replication-config.html,
https://www.postgresql.org/docs/15/view-pg-replication-slots.html,
https://www.postgresql.org/docs/15/monitoring-stats.html#MONITORING-PG-STAT-REPLICATION-SLOTS-VIEW,
https://www.postgresql.org/docs/15/sql-altertable.html#SQL-ALTERTABLE-REPLICA-IDENTITY
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from walrelay.config import masked_dsn
from walrelay.dsn import dsn_problem
from walrelay.dsn import scrub as _scrub
from walrelay.errors import WalrelayError
from walrelay.model import parse_lsn
from walrelay.monitor.sampling import HistoryPoint, Sampling, SlotObservation, record_samples
from walrelay.monitor.thresholds import DEFAULT_THRESHOLDS, GiB, MiB, Severity, Thresholds
from walrelay.monitor.wal_growth import GROWTH_WINDOW_SECONDS, estimate_growth
from walrelay.sqltext import ident, literal
from walrelay.state.slot_samples import SlotSample, read_history
from walrelay.units import format_bytes, format_duration

__all__ = [
    "DiskFacts",
    "DoctorError",
    "Facts",
    "Finding",
    "PublicationFacts",
    "Report",
    "SlotFacts",
    "SpillFacts",
    "TableFacts",
    "TransactionFacts",
    "connect",
    "diagnose",
    "doctor_command",
    "gather",
    "run_doctor",
]

Conn = psycopg.Connection[dict[str, Any]]

_SESSION_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=30s -c lock_timeout=5s"
_SETTINGS = (
    "wal_level",
    "max_slot_wal_keep_size",
    "max_replication_slots",
    "max_wal_senders",
    "logical_decoding_work_mem",
    "idle_in_transaction_session_timeout",
    "max_wal_size",
    "data_directory",
    "port",
)


class DoctorError(WalrelayError):
    """The doctor could not do its review (connection, permissions, bad DSN): exit 2."""

    exit_code = 2


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Setting:
    value: str
    unit: str | None = None
    pending_restart: bool = False

    def bytes(self) -> int | None:
        """A memory setting in bytes; ``None`` for -1 (unlimited) or a non-size."""
        try:
            n = int(self.value)
        except ValueError:
            return None
        if n < 0:
            return None
        return n * _unit_bytes(self.unit)


def _unit_bytes(unit: str | None) -> int:
    if not unit:
        return 1
    m = re.fullmatch(r"(\d*)\s*(B|kB|MB|GB|TB)", unit)
    if not m:
        return 1
    factor = {"B": 1, "kB": 1024, "MB": MiB, "GB": GiB, "TB": 1024 * GiB}[m.group(2)]
    return int(m.group(1) or 1) * factor


@dataclass(frozen=True)
class SlotFacts:
    name: str
    slot_type: str  # 'logical' | 'physical'
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    temporary: bool
    wal_status: str | None  # reserved | extended | unreserved | lost
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None  # current WAL position - restart_lsn
    safe_wal_size: int | None
    inactive_seconds: float | None = None  # PostgreSQL 17+ (inactive_since)


@dataclass(frozen=True)
class PublicationFacts:
    name: str
    all_tables: bool
    schemas: tuple[str, ...] = ()
    insert: bool = True
    update: bool = True
    delete: bool = True
    truncate: bool = True


@dataclass(frozen=True)
class TableFacts:
    schema: str
    name: str
    publications: tuple[str, ...]
    relkind: str  # 'r' table, 'p' partitioned table
    replica_identity: str  # 'd' default, 'f' full, 'i' index, 'n' nothing
    is_partition: bool
    has_primary_key: bool
    identity_index: str | None = None
    candidate_index: str | None = None  # unique, not-null, non-partial: usable as identity
    # pg_stat_user_tables since its statistics were reset (0 for a partitioned root)
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    dead_tuples: int = 0

    @property
    def qualified(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"


@dataclass(frozen=True)
class SpillFacts:
    slot: str
    spill_txns: int
    spill_count: int
    spill_bytes: int
    stream_txns: int = 0
    total_txns: int = 0
    stats_reset: str | None = None


@dataclass(frozen=True)
class TransactionFacts:
    pid: int
    user: str | None
    database: str | None
    application: str | None
    client: str | None
    state: str | None
    seconds: float


@dataclass(frozen=True)
class PreparedFacts:
    gid: str
    owner: str | None
    database: str | None
    seconds: float


@dataclass(frozen=True)
class DiskFacts:
    """The filesystem holding ``pg_wal``, read on the database host itself."""

    path: str
    total: int
    used: int
    free: int

    @property
    def used_percent(self) -> float:
        denominator = self.used + self.free
        return 100.0 * self.used / denominator if denominator else 0.0


@dataclass
class Facts:
    """Everything :func:`diagnose` looks at; filled by :func:`gather` or by hand in tests."""

    server_version: str = "15"
    server_version_num: int = 150000
    database: str = "postgres"
    user: str = "postgres"
    in_recovery: bool = False
    can_read_all_stats: bool = True
    settings: dict[str, Setting] = field(default_factory=dict)
    slots: list[SlotFacts] = field(default_factory=list)
    wal_senders_used: int = 0
    publications: list[PublicationFacts] = field(default_factory=list)
    tables: list[TableFacts] = field(default_factory=list)
    spills: list[SpillFacts] = field(default_factory=list)
    transactions: list[TransactionFacts] = field(default_factory=list)
    prepared: list[PreparedFacts] = field(default_factory=list)
    disk: DiskFacts | None = None
    disk_unknown_reason: str = "not checked"
    wal_dir_bytes: int | None = None
    current_wal_lsn: str | None = None
    # From walrelay's own samples (walrelay.monitor.sampling), before PostgreSQL 17:
    # per slot, how long the samples have seen it inactive (0: this run was first).
    sampled_inactive_seconds: dict[str, float] = field(default_factory=dict)
    sampling: Sampling | None = None  # None: not recorded
    # Per slot, its samples of the last day (engine and doctor runs), oldest first.
    history: dict[str, list[HistoryPoint]] = field(default_factory=dict)
    heartbeat_enabled: bool | None = None  # from --config; None: not known

    def setting(self, name: str) -> Setting | None:
        return self.settings.get(name)


# --------------------------------------------------------------------------- gather


def connect(dsn: str, *, connect_timeout: int = 10) -> Conn:
    """A read-only, autocommit session; raises :class:`DoctorError` with a masked DSN."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise DoctorError(f"invalid --dsn: {problem}")
    params = conninfo_to_dict(dsn)
    options = " ".join(str(o) for o in (params.get("options"), _SESSION_OPTIONS) if o)
    extra: dict[str, Any] = {"options": options}
    if "application_name" not in params:
        extra["application_name"] = "walrelay doctor"
    if "connect_timeout" not in params:
        extra["connect_timeout"] = connect_timeout
    try:
        conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row, **extra)
    except psycopg.Error as e:
        raise DoctorError(
            f"cannot connect to {masked_dsn(dsn)}: {_scrub(str(e), dsn).strip()}"
        ) from None
    row = conn.execute("show transaction_read_only").fetchone()
    if row is None or row["transaction_read_only"] != "on":
        conn.close()
        raise DoctorError(
            f"{masked_dsn(dsn)}: the session did not become read-only (a pooler dropping "
            "the 'options' startup parameter?); refusing to run. Connect to the server directly."
        )
    return conn


_BASICS = """
select current_setting('server_version') as server_version,
       current_setting('server_version_num')::int as server_version_num,
       current_database() as database,
       current_user as "user",
       pg_is_in_recovery() as in_recovery,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') as can_read_all_stats,
       extract(epoch from pg_postmaster_start_time())::float8 as postmaster_start
"""

_CURRENT_LSN = (
    "case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end"
)

_SLOTS = f"""
select s.slot_name::text as name, s.slot_type as slot_type, s.plugin::text as plugin,
       s.database::text as database, s.active, s.active_pid, s.temporary, s.wal_status,
       s.restart_lsn::text as restart_lsn, s.confirmed_flush_lsn::text as confirmed_flush_lsn,
       pg_wal_lsn_diff({_CURRENT_LSN}, s.restart_lsn)::bigint as retained_bytes,
       s.safe_wal_size,
       extract(epoch from now() - (to_jsonb(s) ->> 'inactive_since')::timestamptz)::float8
         as inactive_seconds
from pg_replication_slots s
order by s.slot_name
"""

_PUBLICATIONS = """
select p.pubname::text as name, p.puballtables as all_tables, p.pubinsert as insert,
       p.pubupdate as update, p.pubdelete as delete, p.pubtruncate as truncate,
       {schemas} as schemas
from pg_publication p
order by p.pubname
"""
_PUB_SCHEMAS_15 = """coalesce((select array_agg(n.nspname::text order by n.nspname)
             from pg_publication_namespace pn join pg_namespace n on n.oid = pn.pnnspid
             where pn.pnpubid = p.oid), '{}')"""

_TABLES = """
with pt as (
  select schemaname, tablename, array_agg(pubname::text order by pubname) as publications
  from pg_publication_tables
  group by schemaname, tablename
)
select pt.schemaname::text as schema, pt.tablename::text as name, pt.publications,
       c.relkind::text as relkind, c.relreplident::text as replica_identity,
       c.relispartition as is_partition,
       exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary)
         as has_primary_key,
       (select ic.relname::text from pg_index i join pg_class ic on ic.oid = i.indexrelid
         where i.indrelid = c.oid and i.indisreplident) as identity_index,
       (select ic.relname::text from pg_index i join pg_class ic on ic.oid = i.indexrelid
         where i.indrelid = c.oid and i.indisunique and not i.indisprimary
           and i.indimmediate and i.indisvalid and i.indpred is null and i.indexprs is null
           and not exists (
             select 1 from unnest(i.indkey::int2[]) k(attnum)
             join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
             where not a.attnotnull)
         order by i.indnatts, ic.relname limit 1) as candidate_index,
       coalesce(st.n_tup_ins, 0) as inserts, coalesce(st.n_tup_upd, 0) as updates,
       coalesce(st.n_tup_del, 0) as deletes, coalesce(st.n_dead_tup, 0) as dead_tuples
from pt
join pg_namespace n on n.nspname = pt.schemaname
join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
left join pg_stat_user_tables st on st.relid = c.oid
order by 1, 2
"""

_SPILLS = """
select slot_name::text as slot, spill_txns, spill_count, spill_bytes, stream_txns,
       total_txns, stats_reset::text as stats_reset
from pg_stat_replication_slots
order by slot_name
"""

_TRANSACTIONS = """
select pid, usename::text as user, datname::text as database,
       application_name as application, client_addr::text as client, state,
       greatest(extract(epoch from now() - xact_start), 0)::float8 as seconds
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid() and xact_start is not null
order by xact_start
"""

_PREPARED = """
select gid, owner::text as owner, database::text as database,
       greatest(extract(epoch from now() - prepared), 0)::float8 as seconds
from pg_prepared_xacts
order by prepared
"""


def gather(conn: Conn) -> Facts:
    """Read the facts from a session opened by :func:`connect` (SELECT/SHOW only)."""
    basics = _one(conn, _BASICS)
    facts = Facts(
        server_version=str(basics["server_version"]),
        server_version_num=int(basics["server_version_num"]),
        database=str(basics["database"]),
        user=str(basics["user"]),
        in_recovery=bool(basics["in_recovery"]),
        can_read_all_stats=bool(basics["can_read_all_stats"]),
    )
    # pg_settings hides superuser-only settings (data_directory) from other roles.
    for row in conn.execute(
        "select name, setting, unit, pending_restart from pg_settings where name = any(%s)",
        (list(_SETTINGS),),
    ):
        facts.settings[row["name"]] = Setting(
            str(row["setting"]), row["unit"], bool(row["pending_restart"])
        )
    facts.slots = [SlotFacts(**row) for row in conn.execute(_SLOTS)]
    facts.wal_senders_used = int(_one(conn, "select count(*) as n from pg_stat_replication")["n"])
    schemas = _PUB_SCHEMAS_15 if facts.server_version_num >= 150000 else "'{}'::text[]"
    facts.publications = [
        PublicationFacts(
            name=row["name"],
            all_tables=row["all_tables"],
            schemas=tuple(row["schemas"]),
            insert=row["insert"],
            update=row["update"],
            delete=row["delete"],
            truncate=row["truncate"],
        )
        for row in conn.execute(_PUBLICATIONS.format(schemas=schemas))
    ]
    facts.tables = [
        TableFacts(**{**row, "publications": tuple(row["publications"])})
        for row in conn.execute(_TABLES)
    ]
    if facts.server_version_num >= 140000:
        facts.spills = [SpillFacts(**row) for row in conn.execute(_SPILLS)]
    facts.current_wal_lsn = str(_one(conn, f"select {_CURRENT_LSN}::text as lsn")["lsn"])
    facts.transactions = [TransactionFacts(**row) for row in conn.execute(_TRANSACTIONS)]
    facts.prepared = [PreparedFacts(**row) for row in conn.execute(_PREPARED)]
    try:
        wal = _one(conn, "select coalesce(sum(size), 0)::bigint as bytes from pg_ls_waldir()")
        facts.wal_dir_bytes = int(wal["bytes"])
    except psycopg.errors.InsufficientPrivilege:
        facts.wal_dir_bytes = None  # needs pg_monitor
    facts.disk, facts.disk_unknown_reason = _wal_disk(
        facts.settings.get("data_directory"),
        facts.settings.get("port"),
        float(basics["postmaster_start"]),
    )
    return facts


def _one(conn: Conn, query: str) -> dict[str, Any]:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row


def _wal_disk(
    data_directory: Setting | None, port: Setting | None, postmaster_start: float
) -> tuple[DiskFacts | None, str]:
    """Free space of ``pg_wal``, only when this host provably runs that very server.

    PostgreSQL cannot report free disk through SQL, so the doctor looks at the
    filesystem itself -- but only after ``postmaster.pid`` in the reported data
    directory matches the server's port and start time; a same-named directory
    on another host would give a confident wrong answer. Otherwise: unknown.
    """
    if data_directory is None:
        return None, (
            "data_directory is hidden from this role (grant pg_read_all_settings or "
            "pg_monitor, or run the doctor as a superuser)"
        )
    datadir = Path(data_directory.value)
    pidfile = datadir / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except OSError as e:
        return None, (
            f"cannot read {pidfile} ({e.strerror}): run the doctor on the database host "
            "as the postgres OS user (or root) to check free disk"
        )
    try:
        same_port = port is not None and int(lines[3]) == int(port.value)
        same_start = abs(float(lines[2]) - postmaster_start) < 120
        same_dir = Path(lines[1]) == datadir
    except (IndexError, ValueError):
        return None, f"{pidfile} is not a postmaster.pid this doctor understands"
    if not (same_port and same_start and same_dir):
        return None, (
            f"{pidfile} on this host belongs to another server (port or start time differ): "
            "run the doctor on the database host to check free disk"
        )
    wal = datadir / "pg_wal"
    try:
        usage = shutil.disk_usage(wal)
    except OSError as e:
        return None, f"cannot stat {wal}: {e.strerror}"
    return DiskFacts(str(wal.resolve()), usage.total, usage.used, usage.free), ""


wal_disk = _wal_disk  # also used by the engine's monitor (walrelay.monitor.probe)


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    object: str
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.value
        return out


_EXIT_CODES = {Severity.WARN: 1, Severity.PAGE: 3, Severity.ERROR: 4}


@dataclass
class Report:
    dsn: str  # masked
    server_version: str
    database: str
    findings: list[Finding]

    @property
    def exit_code(self) -> int:
        """The worst severity: 0 ok/info, 1 warn, 3 page, 4 error (2: could not run)."""
        worst = max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)
        return _EXIT_CODES.get(worst, 0) if worst is not None else 0

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for f in self.findings if f.severity is s) for s in Severity}

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "dsn": self.dsn,
                "server_version": self.server_version,
                "database": self.database,
                "findings": [f.to_dict() for f in self.findings],
                "summary": {**self.counts(), "exit_code": self.exit_code},
            },
            option=orjson.OPT_INDENT_2,
        )

    def to_text(self) -> str:
        width = max((len(f.code) for f in self.findings), default=0)
        lines = [f"walrelay doctor: {self.dsn} (PostgreSQL {self.server_version})"]
        for f in self.findings:
            line = f"{f.severity.value.upper():<5}  {f.code:<{width}}  {f.object}: {f.message}"
            if f.fix:
                line += f"  | fix: {f.fix}"
            lines.append(line)
        counts = self.counts()
        worst = [f"{counts[s.value]} {s.value}" for s in reversed(Severity)]
        lines.append(f"summary: {', '.join(worst)} -> exit {self.exit_code}")
        return "\n".join(lines)


def diagnose(
    facts: Facts,
    *,
    long_transaction_seconds: float | None = None,
    slot: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Finding]:
    """All findings, worst first (stable within a severity)."""
    long_tx = (
        thresholds.oldest_transaction_warn_seconds
        if long_transaction_seconds is None
        else long_transaction_seconds
    )
    findings: list[Finding] = []
    findings += _check_server(facts)
    findings += _check_wal_level(facts)
    findings += _check_keep_size(facts, thresholds)
    findings += _check_headroom(facts, thresholds)
    findings += _check_publications(facts)
    findings += _check_tables(facts)
    findings += _check_delete_cleanup(facts)
    findings += check_quiet_publications(facts)
    findings += _check_spills(facts)
    findings += _check_slots(facts, thresholds)
    findings += check_wal_growth(facts)
    if slot is not None:
        findings += _check_named_slot(facts, slot)
    findings += _check_transactions(facts, long_tx, thresholds)
    return sorted(findings, key=lambda f: -f.severity.rank)


def _check_server(facts: Facts) -> list[Finding]:
    out = [
        Finding(
            "server",
            Severity.INFO,
            f"database {facts.database}",
            f"PostgreSQL {facts.server_version}, connected as {facts.user}",
        )
    ]
    if facts.in_recovery and facts.server_version_num < 160000:
        out.append(
            Finding(
                "standby_no_logical_decoding",
                Severity.ERROR,
                "cluster",
                "this server is a standby; PostgreSQL before 16 cannot decode on a standby",
                "point --dsn (and walrelay's source.dsn) at the primary",
            )
        )
    return out


def _check_wal_level(facts: Facts) -> list[Finding]:
    s = facts.setting("wal_level")
    level = s.value if s else "?"
    if level == "logical":
        return [Finding("wal_level_logical", Severity.OK, "wal_level", "wal_level = logical")]
    pending = " (a changed value is waiting for a restart)" if s and s.pending_restart else ""
    return [
        Finding(
            "wal_level_not_logical",
            Severity.ERROR,
            "wal_level",
            f"wal_level = {level}{pending}: logical decoding needs 'logical'",
            "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL",
        )
    ]


def _suggest_keep_size(disk: DiskFacts | None) -> str:
    """A starting value: 10% of the free space of pg_wal's filesystem, or 10GB if unknown."""
    if disk is None:
        return "10GB"
    tenth = disk.free // 10
    if tenth >= GiB:
        return f"{tenth // GiB}GB"
    return f"{max(tenth // MiB, 1)}MB"


def _check_keep_size(facts: Facts, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    s = facts.setting("max_slot_wal_keep_size")
    keep = s.bytes() if s else None
    logical = [x.name for x in facts.slots if x.slot_type == "logical"]
    physical = [x.name for x in facts.slots if x.slot_type == "physical"]
    disk = facts.disk
    suggestion = _suggest_keep_size(disk)
    basis = (
        f"10% of the {format_bytes(disk.free)} free on {disk.path}"
        if disk
        else "free disk could not be checked from here: stay well below the free space of pg_wal"
    )
    fix_keep = (
        f"ALTER SYSTEM SET max_slot_wal_keep_size = '{suggestion}'; SELECT pg_reload_conf(); "
        f"-- {basis}; size it to the WAL written during the longest consumer outage to survive"
    )
    if keep is None:
        slots_note = (
            f"{len(logical)} logical slot(s) ({', '.join(logical)})"
            if logical
            else "no logical slot yet"
        )
        if physical:
            slots_note += f", {len(physical)} physical slot(s)"
        out.append(
            Finding(
                "max_slot_wal_keep_size_unset",
                Severity.PAGE if logical else Severity.WARN,
                "max_slot_wal_keep_size",
                f"max_slot_wal_keep_size = -1 with {slots_note}: nothing stops a stuck "
                "slot from filling the disk with retained WAL",
                fix_keep,
                {"logical_slots": logical},
            )
        )
    else:
        out.append(
            Finding(
                "max_slot_wal_keep_size_set",
                Severity.OK,
                "max_slot_wal_keep_size",
                f"max_slot_wal_keep_size = {format_bytes(keep)}: a stuck slot is invalidated "
                "before it retains more"
                + (f" (the pg_wal filesystem has {format_bytes(disk.free)} free)" if disk else ""),
                details={"bytes": keep},
            )
        )
        if disk is not None and keep > disk.free:
            out.append(
                Finding(
                    "max_slot_wal_keep_size_above_free_disk",
                    Severity.PAGE if logical else Severity.WARN,
                    "max_slot_wal_keep_size",
                    f"max_slot_wal_keep_size = {format_bytes(keep)} is more than the "
                    f"{format_bytes(disk.free)} free on {disk.path}: the disk fills before the "
                    "limit protects it",
                    fix_keep,
                    {"bytes": keep, "free_bytes": disk.free},
                )
            )
    if disk is None:
        wal = (
            f" (pg_wal holds {format_bytes(facts.wal_dir_bytes)})"
            if facts.wal_dir_bytes is not None
            else ""
        )
        out.append(
            Finding(
                "free_disk_unknown",
                Severity.INFO,
                "pg_wal",
                f"could not check free disk of pg_wal{wal}: {facts.disk_unknown_reason}",
                "df -h $(psql -Atc 'show data_directory')/pg_wal   -- on the database host",
            )
        )
    else:
        sev = t.wal_disk(disk.used_percent)
        wal = (
            f", pg_wal holds {format_bytes(facts.wal_dir_bytes)}"
            if facts.wal_dir_bytes is not None
            else ""
        )
        out.append(
            Finding(
                "wal_disk_usage",
                sev,
                "pg_wal",
                f"filesystem of {disk.path} is {disk.used_percent:.0f}% used, "
                f"{format_bytes(disk.free)} free{wal} (warn {t.wal_disk_warn_percent:.0f}%, "
                f"page {t.wal_disk_page_percent:.0f}%)",
                None
                if sev is Severity.OK
                else "free space on the pg_wal filesystem; find slots retaining WAL: SELECT "
                "slot_name, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) "
                "FROM pg_replication_slots",
                {
                    "used_percent": round(disk.used_percent, 1),
                    "free_bytes": disk.free,
                    "wal_dir_bytes": facts.wal_dir_bytes,
                },
            )
        )
    return out


def _check_headroom(facts: Facts, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    for setting, used, what, label in (
        ("max_replication_slots", len(facts.slots), "replication slots", "replication_slots"),
        ("max_wal_senders", facts.wal_senders_used, "WAL senders", "wal_senders"),
    ):
        s = facts.setting(setting)
        if s is None:
            continue
        maximum = int(s.value)
        suggested = max(maximum * 2, used + 5, 10)
        fix = f"ALTER SYSTEM SET {setting} = {suggested}; -- then restart PostgreSQL"
        details = {"used": used, "max": maximum}
        if maximum == 0:
            out.append(
                Finding(
                    f"{label}_disabled",
                    Severity.ERROR,
                    setting,
                    f"{setting} = 0: logical replication cannot run",
                    fix,
                    details,
                )
            )
        elif t.usage(used, maximum) is not Severity.OK:
            out.append(
                Finding(
                    f"{label}_low",
                    Severity.WARN,
                    setting,
                    f"{used} of {maximum} {what} in use: little room for another consumer "
                    "(or a reconnect while the old one lingers)",
                    fix,
                    details,
                )
            )
        else:
            out.append(
                Finding(
                    f"{label}_headroom",
                    Severity.OK,
                    setting,
                    f"{used} of {maximum} {what} in use",
                    details=details,
                )
            )
    return out


def _check_publications(facts: Facts) -> list[Finding]:
    if not facts.publications:
        return [
            Finding(
                "no_publications",
                Severity.INFO,
                f"database {facts.database}",
                "no publication in this database (walrelay run creates a FOR TABLE "
                "publication of source.tables)",
            )
        ]
    out: list[Finding] = []
    published: dict[str, list[str]] = defaultdict(list)
    for table in facts.tables:
        for pubname in table.publications:
            published[pubname].append(table.qualified)
    for pub in facts.publications:
        name = ident(pub.name)
        narrow = (
            f"CREATE PUBLICATION {ident(pub.name + '_narrow')} FOR TABLE <the tables "
            f"consumers need>; -- switch the consumer to it, then DROP PUBLICATION {name}"
        )
        count = len(published[pub.name])
        if pub.all_tables:
            out.append(
                Finding(
                    "publication_all_tables",
                    Severity.WARN,
                    f"publication {pub.name}",
                    f"FOR ALL TABLES ({count} tables now, and every future one): each slot "
                    "on it decodes and sends every table's changes",
                    narrow,
                    {"tables": count},
                )
            )
        elif pub.schemas:
            schemas = ", ".join(ident(s) for s in pub.schemas)
            out.append(
                Finding(
                    "publication_tables_in_schema",
                    Severity.WARN,
                    f"publication {pub.name}",
                    f"FOR TABLES IN SCHEMA {schemas} ({count} tables now, and every future "
                    "one in those schemas): decodes everything there",
                    f"ALTER PUBLICATION {name} DROP TABLES IN SCHEMA {schemas}; "
                    f"ALTER PUBLICATION {name} ADD TABLE <the tables consumers need>;",
                    {"tables": count, "schemas": list(pub.schemas)},
                )
            )
        else:
            out.append(
                Finding(
                    "publication_narrow",
                    Severity.OK,
                    f"publication {pub.name}",
                    f"FOR TABLE publication of {count} table(s)",
                    details={"tables": count},
                )
            )
    return out


def _check_tables(facts: Facts) -> list[Finding]:
    pubs = {p.name: p for p in facts.publications}
    out: list[Finding] = []
    keyed = 0
    for table in facts.tables:
        name = table.qualified
        publishing = [
            p for p in table.publications if p in pubs and (pubs[p].update or pubs[p].delete)
        ]
        via = ", ".join(table.publications)
        key_fix = (
            f"ALTER TABLE {name} REPLICA IDENTITY USING INDEX {ident(table.candidate_index)};"
            if table.candidate_index
            else f"ALTER TABLE {name} ADD PRIMARY KEY (<key columns>); -- last resort: "
            f"ALTER TABLE {name} REPLICA IDENTITY FULL"
        )
        identity = table.replica_identity
        no_identity = identity == "n" or (identity == "i" and table.identity_index is None)
        if no_identity or (identity == "d" and not table.has_primary_key):
            what = (
                "REPLICA IDENTITY NOTHING"
                if no_identity
                else "no primary key and REPLICA IDENTITY DEFAULT"
            )
            code = "replica_identity_nothing" if no_identity else "table_without_key"
            fix = (
                f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"
                if no_identity and table.has_primary_key
                else key_fix
            )
            if publishing:
                out.append(
                    Finding(
                        code,
                        Severity.ERROR,
                        f"table {name}",
                        f"{what}, published by {via}: UPDATE and DELETE on it fail on the "
                        "primary ('does not have a replica identity and publishes updates') "
                        "and CDC has no key to order its events by",
                        fix,
                        {"publications": list(table.publications)},
                    )
                )
            else:
                out.append(
                    Finding(
                        code,
                        Severity.WARN,
                        f"table {name}",
                        f"{what}, published by {via} (inserts only): CDC has no key to "
                        "order its events by",
                        fix,
                        {"publications": list(table.publications)},
                    )
                )
        elif identity == "f":
            if table.has_primary_key:
                fix = f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"
                note = ""
            else:
                fix = (
                    f"ALTER TABLE {name} REPLICA IDENTITY USING INDEX "
                    f"{ident(table.candidate_index)};"
                    if table.candidate_index
                    else f"ALTER TABLE {name} ADD PRIMARY KEY (<key columns>); "
                    f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"
                )
                note = " and it has no primary key (walrelay needs source.key_columns for it)"
            if table.inserts and not table.updates and "outbox" not in table.name.lower():
                note += " (insert-only so far: FULL buys nothing but the risk)"
            elif "outbox" in table.name.lower():
                note += " (an outbox is insert-only: FULL buys nothing)"
            out.append(
                Finding(
                    "replica_identity_full",
                    Severity.WARN,
                    f"table {name}",
                    "REPLICA IDENTITY FULL: every UPDATE and DELETE writes the whole old row "
                    f"to WAL{note}",
                    fix,
                    {"publications": list(table.publications)},
                )
            )
        else:
            keyed += 1
        if "outbox" in table.name.lower() and table.relkind != "p" and not table.is_partition:
            out.append(
                Finding(
                    "outbox_not_partitioned",
                    Severity.WARN,
                    f"table {name}",
                    "looks like an outbox but is not partitioned: clearing sent rows means "
                    "DELETEs (more WAL, bloat, vacuum) instead of dropping old partitions",
                    "walrelay outbox init   -- creates a partitioned outbox table; move the "
                    f"writers to it, then ALTER PUBLICATION ... DROP TABLE {name}",
                    {"publications": list(table.publications)},
                )
            )
    if keyed:
        out.append(
            Finding(
                "published_tables_keyed",
                Severity.OK,
                f"database {facts.database}",
                f"{keyed} published table(s) have a primary key or replica identity index",
                details={"tables": keyed},
            )
        )
    return out


DELETE_CLEANUP_MIN_DELETES = 1000
"""Fewer deleted rows than this are not judged a cleanup pattern."""


def _check_delete_cleanup(facts: Facts) -> list[Finding]:
    """A published table whose rows are inserted, rarely updated, then deleted
    one by one: an outbox or queue cleaned with DELETE, judged by its
    statistics (``pg_stat_user_tables``), whatever its name."""
    out: list[Finding] = []
    for table in facts.tables:
        deletes, inserts = table.deletes, table.inserts
        if (
            deletes < DELETE_CLEANUP_MIN_DELETES
            or deletes * 2 < inserts
            or table.updates * 10 > inserts
        ):
            continue
        name = table.qualified
        out.append(
            Finding(
                "delete_cleanup",
                Severity.WARN,
                f"table {name}",
                f"{inserts} rows inserted and {deletes} deleted row by row, {table.updates} "
                f"updated ({table.dead_tuples} dead tuples now): cleanup by DELETE writes and "
                "decodes every row a second time (WAL, walsender CPU, bloat, vacuum)",
                "partition it by time and drop old partitions instead (walrelay outbox init "
                "makes such an outbox and its upkeep drops them); or emit the events with "
                "pg_logical_emit_message(true, <prefix>, <payload>), which writes no table",
                {
                    "inserts": inserts,
                    "updates": table.updates,
                    "deletes": deletes,
                    "dead_tuples": table.dead_tuples,
                },
            )
        )
    return out


QUIET_WAL_BYTES = 16 * MiB
"""WAL written by the database between two doctor runs, while the published
tables saw no write and a slot's position did not move, that makes a quiet
publication worth a warning (one WAL segment)."""


def check_quiet_publications(facts: Facts) -> list[Finding]:
    """A quiet publication in a busy database retains WAL unless something
    (heartbeats, or confirming keepalives) moves its slot: judged from the
    previous doctor run's sample, and from the config's heartbeat setting."""
    out: list[Finding] = []
    if facts.heartbeat_enabled is False:
        out.append(
            Finding(
                "heartbeat_off",
                Severity.WARN,
                "config heartbeat",
                "heartbeats are off: while the published tables are quiet and the rest of "
                "the database is busy, only keepalives move the slot, and lag cannot be "
                "measured end to end",
                "heartbeat: {enabled: true, interval: 30s}",
            )
        )
    sampling = facts.sampling
    if sampling is None or facts.current_wal_lsn is None:
        return out
    writes = sampling.published_writes
    for slot in facts.slots:
        if slot.slot_type != "logical" or slot.database != facts.database:
            continue
        if slot.wal_status == "lost":
            continue
        prev = _quiet_since(facts.history.get(slot.name, []), sampling.previous.get(slot.name))
        if (
            prev is None
            or prev.published_writes is None
            or prev.published_writes != writes
            or prev.confirmed_flush_lsn != slot.confirmed_flush_lsn
        ):
            continue
        written = parse_lsn(facts.current_wal_lsn) - parse_lsn(prev.wal_lsn)
        if written < QUIET_WAL_BYTES:
            continue
        retained = slot.retained_bytes or 0
        out.append(
            Finding(
                "quiet_publication",
                Severity.WARN,
                f"slot {slot.name}",
                f"its published tables saw no write in the last "
                f"{format_duration(prev.age_seconds)} while the database wrote "
                f"{format_bytes(written)} of WAL, and its position did not move: it retains "
                f"{format_bytes(retained)} and grows with every unrelated write",
                "turn heartbeats on (walrelay: heartbeat: {enabled: true}; another consumer: "
                "SELECT pg_logical_emit_message(true, 'heartbeat', '') on a timer) so the "
                "slot moves while the publication is quiet",
                {"wal_written": written, "retained_bytes": retained},
            )
        )
    return out


def _quiet_since(
    history: list[HistoryPoint], previous: SlotSample | HistoryPoint | None
) -> SlotSample | HistoryPoint | None:
    """The oldest sample of the unbroken run of samples that saw the slot at
    the newest sample's position and write count (the start of the quiet
    time); the previous run's sample when there is no history."""
    if not history:
        return previous
    start = history[-1]
    for point in reversed(history[:-1]):
        if (
            point.confirmed_flush_lsn != start.confirmed_flush_lsn
            or point.published_writes != start.published_writes
        ):
            break
        start = point
    return start


ETA_PAGE_SECONDS = 3600.0
ETA_WARN_SECONDS = 24 * 3600.0
"""A slot lost, or pg_wal's disk full, sooner than this at the current growth: page / warn."""


def check_wal_growth(facts: Facts) -> list[Finding]:
    """Per slot, the growth of its retained WAL over the last hour of samples
    (:mod:`walrelay.monitor.wal_growth`) and when, at that rate, the slot
    passes ``max_slot_wal_keep_size`` (lost) or pg_wal's disk fills."""
    out: list[Finding] = []
    for slot in facts.slots:
        if slot.retained_bytes is None or slot.temporary or slot.wal_status == "lost":
            continue
        points = [
            (p.age_seconds, p.retained_bytes)
            for p in facts.history.get(slot.name, [])
            if p.retained_bytes is not None
        ]
        growth = estimate_growth([*points, (0.0, slot.retained_bytes)])
        if growth is None:
            continue
        etas: list[tuple[float, str]] = []
        if slot.safe_wal_size is not None:
            etas.append(
                (
                    growth.seconds_until(slot.safe_wal_size),
                    "it passes max_slot_wal_keep_size and is lost",
                )
            )
        if facts.disk is not None:
            etas.append((growth.seconds_until(facts.disk.free), "the disk under pg_wal fills"))
        first = min(etas, default=None)
        severity = (
            Severity.INFO
            if first is None
            else Severity.PAGE
            if first[0] < ETA_PAGE_SECONDS
            else Severity.WARN
            if first[0] < ETA_WARN_SECONDS
            else Severity.INFO
        )
        when = "; ".join(f"{what} in {format_duration(eta)}" for eta, what in sorted(etas))
        out.append(
            Finding(
                "slot_wal_growth",
                severity,
                f"slot {slot.name}",
                f"retained WAL grows {format_bytes(growth.bytes_per_second * 3600)}/h "
                f"(from {format_bytes(growth.first_bytes)} to "
                f"{format_bytes(growth.last_bytes)} over {format_duration(growth.span_seconds)}, "
                f"{growth.samples} samples): "
                + (
                    f"at this rate {when}"
                    if when
                    else "no cap and no visible disk to measure it against"
                ),
                "find why its consumer is behind or stopped; raise max_slot_wal_keep_size only "
                f"if the disk allows; if abandoned: SELECT pg_drop_replication_slot("
                f"{literal(slot.name)});",
                {
                    "bytes_per_hour": round(growth.bytes_per_second * 3600),
                    "span_seconds": round(growth.span_seconds, 1),
                    "samples": growth.samples,
                    "seconds_until_lost": next((round(e) for e, w in etas if "lost" in w), None),
                    "seconds_until_disk_full": next(
                        (round(e) for e, w in etas if "disk" in w), None
                    ),
                },
            )
        )
    return out


def _check_spills(facts: Facts) -> list[Finding]:
    s = facts.setting("logical_decoding_work_mem")
    mem = (s.bytes() if s else None) or 64 * MiB
    spilled = [x for x in facts.spills if x.spill_txns > 0]
    if not spilled:
        return [
            Finding(
                "logical_decoding_work_mem",
                Severity.OK,
                "logical_decoding_work_mem",
                f"logical_decoding_work_mem = {format_bytes(mem)}; no slot has spilled to disk "
                "since its statistics were reset",
                details={"bytes": mem},
            )
        ]
    out: list[Finding] = []
    for x in spilled:
        per_txn = x.spill_bytes // max(x.spill_txns, 1)
        suggested = _next_power_of_two_mb(min(max(mem * 2, per_txn), GiB))
        since = f" since {x.stats_reset}" if x.stats_reset else ""
        out.append(
            Finding(
                "logical_decoding_spills",
                Severity.WARN,
                f"slot {x.slot}",
                f"{x.spill_txns} transaction(s) spilled {format_bytes(x.spill_bytes)} to disk"
                f"{since} (logical_decoding_work_mem = {format_bytes(mem)}, per walsender)",
                f"ALTER SYSTEM SET logical_decoding_work_mem = '{suggested}'; SELECT "
                "pg_reload_conf(); -- or stream large transactions (walrelay source.streaming: "
                f"true); then SELECT pg_stat_reset_replication_slot({literal(x.slot)}) to watch",
                {
                    "spill_txns": x.spill_txns,
                    "spill_count": x.spill_count,
                    "spill_bytes": x.spill_bytes,
                    "stream_txns": x.stream_txns,
                },
            )
        )
    return out


def _check_slots(facts: Facts, t: Thresholds) -> list[Finding]:
    if not facts.slots:
        return [Finding("no_slots", Severity.INFO, "cluster", "no replication slots")]
    s = facts.setting("max_slot_wal_keep_size")
    keep = s.bytes() if s else None
    out: list[Finding] = []
    healthy = 0
    for slot in facts.slots:
        obj = f"slot {slot.name}"
        drop = f"SELECT pg_drop_replication_slot({literal(slot.name)});"
        retained = slot.retained_bytes or 0
        before = len(out)
        if slot.wal_status == "lost":
            out.append(
                Finding(
                    "slot_lost",
                    Severity.PAGE,
                    obj,
                    "wal_status = lost: WAL it still needed was removed; its consumer cannot "
                    "resume and changes in the gap are gone",
                    f"{drop} -- then re-create it and re-snapshot the tables its consumer needs",
                    {"wal_status": slot.wal_status},
                )
            )
        elif slot.wal_status == "unreserved":
            safe = (
                f" ({format_bytes(slot.safe_wal_size)} to go)"
                if slot.safe_wal_size is not None
                else ""
            )
            out.append(
                Finding(
                    "slot_wal_unreserved",
                    Severity.WARN,
                    obj,
                    "wal_status = unreserved: past max_slot_wal_keep_size, it will be lost at "
                    f"a coming checkpoint unless its consumer catches up{safe}",
                    f"let its consumer catch up now (is it running?), or if abandoned: {drop}",
                    {"wal_status": slot.wal_status, "safe_wal_size": slot.safe_wal_size},
                )
            )
        if not slot.active and not slot.temporary and slot.wal_status != "lost":
            inactive = slot.inactive_seconds  # PostgreSQL 17+
            if inactive is None:
                inactive = facts.sampled_inactive_seconds.get(slot.name)
            if inactive is None or inactive == 0:
                sev, since = (
                    Severity.WARN,
                    (
                        " now (PostgreSQL < 17 does not say since when; "
                        + (
                            "this run is the first to see it inactive: the next doctor run "
                            "measures how long)"
                            if inactive == 0
                            else "run the doctor without --no-record to measure it)"
                        )
                    ),
                )
            else:
                sev = t.slot_inactive(inactive)
                since = f" for {format_duration(inactive)}"
                if sev is Severity.OK:
                    sev = Severity.INFO
            if sev is not Severity.OK:
                out.append(
                    Finding(
                        "slot_inactive",
                        sev,
                        obj,
                        f"inactive{since}, no consumer connected; it retains "
                        f"{format_bytes(retained)} of WAL and keeps growing",
                        f"start its consumer (walrelay run), or if abandoned: {drop}",
                        {"retained_bytes": retained, "inactive_seconds": inactive},
                    )
                )
        lag = t.retained_wal(retained, keep)
        if lag is not Severity.OK and slot.wal_status != "lost":
            page_at = t.retained_wal_page_limit(keep)
            warn_at = min(t.retained_wal_warn_bytes, page_at)
            out.append(
                Finding(
                    "slot_retained_wal",
                    lag,
                    obj,
                    f"retains {format_bytes(retained)} of WAL (warn {format_bytes(warn_at)}"
                    f", page {format_bytes(page_at)})",
                    f"find why its consumer is behind or stopped (active_pid "
                    f"{slot.active_pid}); if abandoned: {drop}",
                    {"retained_bytes": retained},
                )
            )
        if len(out) == before:
            healthy += 1
    by_db: dict[str, list[str]] = defaultdict(list)
    for slot in facts.slots:
        if slot.slot_type == "logical" and slot.database:
            by_db[slot.database].append(slot.name)
    for database, names in sorted(by_db.items()):
        if len(names) > 1:
            out.append(
                Finding(
                    "multiple_logical_slots",
                    Severity.WARN,
                    f"database {database}",
                    f"{len(names)} logical slots ({', '.join(names)}): each one decodes all "
                    "of the database's WAL again",
                    "serve several destinations from one slot (one walrelay with several "
                    "destinations); drop the unused: "
                    + " ".join(
                        f"SELECT pg_drop_replication_slot({literal(n)});" for n in names[1:]
                    ),
                    {"slots": names},
                )
            )
    if healthy:
        out.append(
            Finding(
                "slots_healthy",
                Severity.OK,
                "cluster",
                f"{healthy} of {len(facts.slots)} slot(s) active (or temporary), not lost, "
                "retained WAL under the warn threshold",
                details={"healthy": healthy, "slots": len(facts.slots)},
            )
        )
    return out


def _check_named_slot(facts: Facts, name: str) -> list[Finding]:
    obj = f"slot {name}"
    slot = next((s for s in facts.slots if s.name == name), None)
    if slot is None:
        limit = facts.setting("max_replication_slots")
        full = limit is not None and len(facts.slots) >= int(limit.value)
        return [
            Finding(
                "slot_missing",
                Severity.ERROR if full else Severity.INFO,
                obj,
                "does not exist"
                + (
                    " and every replication slot is taken: it cannot be created"
                    if full
                    else "; walrelay run creates it (source.create_slot: true)"
                ),
                f"SELECT pg_create_logical_replication_slot({literal(name)}, 'pgoutput');"
                + (" -- after raising max_replication_slots" if full else ""),
            )
        ]
    drop = f"SELECT pg_drop_replication_slot({literal(name)});"
    create = f"SELECT pg_create_logical_replication_slot({literal(name)}, 'pgoutput');"
    if slot.slot_type != "logical":
        return [
            Finding(
                "slot_not_logical",
                Severity.ERROR,
                obj,
                f"is a {slot.slot_type} slot, walrelay needs a logical one",
                "choose another source.slot name (this one likely belongs to a replica)",
            )
        ]
    if slot.plugin != "pgoutput":
        return [
            Finding(
                "slot_wrong_plugin",
                Severity.ERROR,
                obj,
                f"uses output plugin {slot.plugin}, walrelay needs pgoutput",
                f"{drop} {create} -- or choose another source.slot name",
            )
        ]
    if slot.database != facts.database:
        return [
            Finding(
                "slot_other_database",
                Severity.ERROR,
                obj,
                f"belongs to database {slot.database}, not {facts.database}",
                f"connect to database {slot.database}, or choose another source.slot name",
            )
        ]
    state = f"active (pid {slot.active_pid})" if slot.active else "inactive"
    return [
        Finding(
            "slot_ready",
            Severity.OK,
            obj,
            f"logical pgoutput slot in {facts.database}, {state}, "
            f"confirmed_flush_lsn {slot.confirmed_flush_lsn}",
        )
    ]


def _check_transactions(facts: Facts, long_tx: float, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    timeout = facts.setting("idle_in_transaction_session_timeout")
    timeout_off = timeout is None or timeout.value == "0"
    for tx in facts.transactions:
        sev = t.open_transaction(tx.seconds, long_tx)
        if sev is Severity.OK:
            continue
        idle = tx.state is not None and tx.state.startswith("idle in transaction")
        who = ", ".join(
            x
            for x in (
                f"user {tx.user}" if tx.user else "",
                f"database {tx.database}" if tx.database else "",
                f"application '{tx.application}'" if tx.application else "",
                f"client {tx.client}" if tx.client else "",
            )
            if x
        )
        fix = f"SELECT pg_terminate_backend({tx.pid});"
        if idle and timeout_off:
            fix += (
                " -- and ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
                "SELECT pg_reload_conf();"
            )
        out.append(
            Finding(
                "idle_in_transaction" if idle else "long_transaction",
                sev,
                f"pid {tx.pid}",
                f"{'IDLE IN TRANSACTION' if idle else 'transaction open'} for "
                f"{format_duration(tx.seconds)} (state '{tx.state}', {who}): holds back every "
                "logical slot's restart_lsn (retained WAL) and catalog_xmin (vacuum)",
                fix,
                {"pid": tx.pid, "state": tx.state, "seconds": round(tx.seconds, 1)},
            )
        )
    for p in facts.prepared:
        if t.open_transaction(p.seconds, long_tx) is Severity.OK:
            continue
        out.append(
            Finding(
                "old_prepared_transaction",
                Severity.WARN,
                f"prepared transaction '{p.gid}'",
                f"prepared {format_duration(p.seconds)} ago in database {p.database}: holds back "
                "the slots like an open transaction",
                f"COMMIT PREPARED {literal(p.gid)}; -- or ROLLBACK PREPARED {literal(p.gid)}; "
                f"(in database {p.database})",
                {"seconds": round(p.seconds, 1)},
            )
        )
    if not facts.can_read_all_stats:
        out.append(
            Finding(
                "activity_partly_hidden",
                Severity.INFO,
                f"user {facts.user}",
                "this role cannot see other roles' transactions in pg_stat_activity",
                f"GRANT pg_monitor TO {ident(facts.user)};",
            )
        )
    if not out or all(f.severity is Severity.INFO for f in out):
        out.insert(
            0,
            Finding(
                "no_long_transactions",
                Severity.OK,
                "cluster",
                f"no transaction open for {format_duration(long_tx)} or more",
            ),
        )
    return out


# --------------------------------------------------------------------------- helpers


def _next_power_of_two_mb(n: int) -> str:
    mb = 64
    while mb * MiB < n:
        mb *= 2
    return f"{mb // 1024}GB" if mb >= 1024 else f"{mb}MB"


# --------------------------------------------------------------------------- command


def run_doctor(
    dsn: str,
    *,
    long_transaction_seconds: float | None = None,
    slot: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    state_schema: str | None = "walrelay",
    heartbeat_enabled: bool | None = None,
    history_schema: str | None = None,
) -> Report:
    """Connect read-only, gather, read the slot samples' history (in
    ``history_schema``, default ``state_schema``), record this run's samples
    (in ``state_schema``; None: not), diagnose. Raises :class:`DoctorError`."""
    with connect(dsn) as conn:
        try:
            facts = gather(conn)
        except psycopg.Error as e:
            raise DoctorError(
                f"reading the catalogs of {masked_dsn(dsn)} failed: {_scrub(str(e), dsn).strip()}"
            ) from None
        history_schema = history_schema or state_schema
        if history_schema is not None:
            facts.history = _read_history(conn, history_schema)
    facts.heartbeat_enabled = heartbeat_enabled
    extra: list[Finding] = []
    if state_schema is not None:
        why = _record_samples(dsn, state_schema, facts)
        if why is not None:
            extra.append(
                Finding(
                    "samples_not_recorded",
                    Severity.INFO,
                    f"schema {state_schema}",
                    f"{_scrub(why, dsn)}: inactive slots cannot be timed before PostgreSQL "
                    "17, nor quiet publications seen",
                    "run the doctor as a role that may create and write walrelay's state "
                    "schema (the role walrelay runs as), on the primary",
                )
            )
    findings = diagnose(
        facts, long_transaction_seconds=long_transaction_seconds, slot=slot, thresholds=thresholds
    )
    findings = sorted(findings + extra, key=lambda f: -f.severity.rank)
    return Report(masked_dsn(dsn), facts.server_version, facts.database, findings)


HISTORY_SECONDS = 24 * 3600.0
"""How far back the doctor reads the samples (the quiet-publication check
looks that far; the growth rate over the last hour)."""


def _read_history(conn: Conn, schema: str) -> dict[str, list[HistoryPoint]]:
    """The samples of the last day; none when there are none to read (no
    engine or doctor recorded any, or the role may not read them)."""
    try:
        return read_history(conn, schema, max(HISTORY_SECONDS, GROWTH_WINDOW_SECONDS))
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return {}
    except psycopg.errors.InsufficientPrivilege:
        return {}


def _record_samples(dsn: str, schema: str, facts: Facts) -> str | None:
    """Record the slots in walrelay's samples and read the previous run's into
    ``facts``; why not, when it could not."""
    if facts.in_recovery:
        return "a standby cannot record samples"
    if facts.current_wal_lsn is None:
        return "the WAL position is unknown"
    writes = sum(t.inserts + t.updates + t.deletes for t in facts.tables)
    observations = [
        SlotObservation(
            slot=slot.name,
            database=slot.database,
            active=slot.active,
            confirmed_flush_lsn=slot.confirmed_flush_lsn,
            wal_lsn=facts.current_wal_lsn,
            published_writes=writes if slot.database == facts.database else None,
            wal_status=slot.wal_status,
            retained_bytes=slot.retained_bytes,
            confirmed_lag_bytes=_lag(facts.current_wal_lsn, slot.confirmed_flush_lsn),
            safe_wal_size=slot.safe_wal_size,
        )
        for slot in facts.slots
        if not slot.temporary
    ]
    sampling = record_samples(dsn, schema, observations, writes)
    if isinstance(sampling, str):
        return sampling
    facts.sampling = sampling
    facts.sampled_inactive_seconds = sampling.inactive_seconds
    return None


def _lag(current: str, confirmed: str | None) -> int | None:
    return None if confirmed is None else parse_lsn(current) - parse_lsn(confirmed)


@click.command("doctor")
@click.option(
    "--dsn",
    default=None,
    envvar="WALRELAY_DSN",
    help="libpq connection string or URL of the source database (or $WALRELAY_DSN; "
    "default with --config: source.dsn)",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="walrelay's config: its source, slot, state schema and heartbeat are reviewed too",
)
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
@click.option(
    "--long-transaction-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULT_THRESHOLDS.oldest_transaction_warn_seconds,
    show_default=True,
    help="report transactions open at least this long",
)
@click.option("--slot", default=None, help="also check this slot is usable by walrelay")
@click.option(
    "--state-schema",
    default=None,
    help="where the slot samples are kept (default: state.schema of --config, or walrelay)",
)
@click.option(
    "--no-record",
    is_flag=True,
    help="write nothing (no slot samples: inactive slots cannot be timed before PostgreSQL 17)",
)
def doctor_command(
    dsn: str | None,
    config_path: str | None,
    as_json: bool,
    long_transaction_seconds: float,
    slot: str | None,
    state_schema: str | None,
    no_record: bool,
) -> None:
    """Review a PostgreSQL cluster for logical-replication CDC.

    One finding per line: severity (ok, info, warn, page, error), a stable
    code, what it is about, and the SQL or setting that fixes it. Exit code:
    the worst severity (0 ok/info, 1 warn, 3 page, 4 error); 2 when the
    doctor could not connect or read the catalogs. It reads only, except the
    slot samples it keeps in walrelay's state schema (--no-record: none).
    """
    heartbeat: bool | None = None
    if config_path is not None:
        from walrelay.config import load_config
        from walrelay.errors import ConfigError

        try:
            config = load_config(config_path)
        except ConfigError as e:
            click.echo(f"walrelay doctor: error: {e}", err=True)
            sys.exit(2)
        dsn = dsn or config.source.dsn_value
        slot = slot or config.source.slot
        state_schema = state_schema or config.state.schema
        heartbeat = config.heartbeat.enabled
    if not dsn:
        click.echo("walrelay doctor: error: give --dsn, $WALRELAY_DSN or --config", err=True)
        sys.exit(2)
    try:
        report = run_doctor(
            dsn,
            long_transaction_seconds=long_transaction_seconds,
            slot=slot,
            state_schema=None if no_record else (state_schema or "walrelay"),
            heartbeat_enabled=heartbeat,
            history_schema=state_schema or "walrelay",
        )
    except DoctorError as e:
        click.echo(f"walrelay doctor: error: {e}", err=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(report.to_json().decode())
    else:
        click.echo(report.to_text())
    sys.exit(report.exit_code)
