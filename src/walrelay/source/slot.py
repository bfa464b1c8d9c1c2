"""Checks and creates what streaming needs on the source: publication and slot.

Everything is checked before anything is created, so a failed start leaves
the database as it was. Names from config go through ``sql.Identifier``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from walrelay import sqltext
from walrelay.config import SourceConfig
from walrelay.errors import SlotBusy, SlotLost, SourceSetupError
from walrelay.model import Lsn, parse_lsn

log = logging.getLogger("walrelay.source.slot")


# -- the exported snapshot --------------------------------------------------------


@dataclass
class ExportedSlot:
    """A slot just created with an exported snapshot; close once the copy is read."""

    slot: str
    consistent_point: Lsn
    snapshot_name: str
    conn: psycopg.AsyncConnection[tuple[Any, ...]] | None

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


async def create_exported_slot(dsn: str, slot: str) -> ExportedSlot:
    """``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` (PostgreSQL 15 syntax).

    The returned connection must stay open while readers import the snapshot.
    """
    conn = await psycopg.AsyncConnection.connect(
        dsn, replication="database", autocommit=True, application_name="walrelay-snapshot"
    )
    try:
        cur = await conn.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                sql.Identifier(slot)
            )
        )
        row = await cur.fetchone()
    except BaseException:
        await conn.close()
        raise
    assert row is not None
    return ExportedSlot(slot, parse_lsn(str(row[1])), str(row[2]), conn)


@dataclass(frozen=True)
class TableInfo:
    name: str  # schema.table
    oid: int
    replica_identity: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass
class SourceInfo:
    tables: dict[str, TableInfo] = field(default_factory=dict)
    slot_created: bool = False
    publication_created: bool = False
    confirmed_flush_lsn: Lsn | None = None
    server_version: int = 0
    # Set when the slot was created with an exported snapshot (walrelay.source.snapshot).
    exported: ExportedSlot | None = None

    @property
    def key_columns(self) -> dict[str, tuple[str, ...]]:
        """By the table's current name (what its events carry)."""
        return {t.name: t.key_columns for t in self.tables.values()}


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.partition(".")
    return schema, table


async def _fetchone(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    query: str | sql.Composed,
    params: tuple[object, ...] = (),
) -> tuple[object, ...] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def _check_wal_level(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    row = await _fetchone(conn, "select current_setting('wal_level')")
    level = str(row[0]) if row else "?"
    if level != "logical":
        raise SourceSetupError(
            f"wal_level is '{level}' on the source; logical decoding needs 'logical'",
            fix="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        )


async def _check_encoding(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    """SQL_ASCII: PostgreSQL does not know what the bytes of its text mean. walrelay
    reads them as stored and decodes them as UTF-8 (walrelay.source.encoding);
    say so once, with what becomes of bytes that are not UTF-8."""
    row = await _fetchone(conn, "select current_setting('server_encoding'), current_database()")
    if row and str(row[0]) == "SQL_ASCII":
        log.warning(
            "database %s has encoding SQL_ASCII: walrelay reads its text as UTF-8; a"
            " value whose bytes are not valid UTF-8 is delivered as '\\x' and its bytes in"
            " hex, its column listed in the event's not_utf8. Converting the database to"
            " UTF8 avoids it.",
            row[1],
        )


_TABLE_QUERY = """
select c.oid, c.relkind, c.relreplident
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s
"""

_PK_QUERY = """
select a.attname
from pg_index i
join lateral unnest(i.indkey) with ordinality as k(attnum, ord) on true
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
where i.indrelid = %s and {cond}
order by k.ord
"""

_COLUMNS_QUERY = """
select attname from pg_attribute
where attrelid = %s and attnum > 0 and not attisdropped order by attnum
"""


async def _key_columns(
    conn: psycopg.AsyncConnection[tuple[object, ...]], oid: int, cond: str
) -> tuple[str, ...]:
    cur = await conn.execute(_PK_QUERY.format(cond=cond), (oid,))
    return tuple(str(r[0]) for r in await cur.fetchall())


async def inspect_table(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    name: str,
    override: list[str] | None,
) -> TableInfo:
    schema, table = split_table(name)
    row = await _fetchone(conn, _TABLE_QUERY, (schema, table))
    if row is None:
        raise SourceSetupError(
            f"table {name} does not exist in the source database",
            fix=f"create {name}, or remove it from source.tables",
        )
    oid, relkind, ident = int(str(row[0])), str(row[1]), str(row[2])
    if relkind not in ("r", "p"):
        raise SourceSetupError(
            f"{name} is not a table (relkind '{relkind}'); only tables can be published",
            fix=f"remove {name} from source.tables",
        )
    cur = await conn.execute(_COLUMNS_QUERY, (oid,))
    columns = tuple(str(r[0]) for r in await cur.fetchall())
    pk = await _key_columns(conn, oid, "i.indisprimary")
    if ident == "n":
        raise SourceSetupError(
            f"table {name} has REPLICA IDENTITY NOTHING: updates and deletes carry no key",
            fix=f"ALTER TABLE {sqltext.qualified(name)} REPLICA IDENTITY DEFAULT "
            "(with a primary key)",
        )
    if ident == "d" and not pk:
        raise SourceSetupError(
            f"table {name} has no primary key and REPLICA IDENTITY DEFAULT, so updates "
            "and deletes would carry no key",
            fix=f"ALTER TABLE {sqltext.qualified(name)} ADD PRIMARY KEY (...), or ALTER TABLE "
            f"{sqltext.qualified(name)} REPLICA IDENTITY FULL and set source.key_columns "
            "for it",
        )
    key: tuple[str, ...] = pk
    if ident == "i":
        key = await _key_columns(conn, oid, "i.indisreplident")
    if override:
        missing = [c for c in override if c not in columns]
        if missing:
            raise SourceSetupError(
                f"source.key_columns for {name} names unknown column(s): {', '.join(missing)}",
                fix=f"use columns of {name}: {', '.join(columns)}",
            )
        key = tuple(override)
    if not key:
        raise SourceSetupError(
            f"table {name} has REPLICA IDENTITY FULL but no primary key, so walrelay "
            "cannot tell which events belong to the same row",
            fix=f"add a primary key to {name}, or set source.key_columns: {{{name}: [col, ...]}}",
        )
    if ident == "f":
        log.warning(
            "table %s has REPLICA IDENTITY FULL: every update and delete logs the whole "
            "old row to WAL; DEFAULT with a primary key is cheaper",
            name,
        )
    return TableInfo(name, oid, ident, key, columns)


async def _check_publication(
    conn: psycopg.AsyncConnection[tuple[object, ...]], cfg: SourceConfig, tables: list[str]
) -> list[str] | None:
    """Tables to add to the publication, or None when it must be created."""
    schemas = (
        "(select coalesce(array_agg(n.nspname::text order by n.nspname), '{}') "
        "from pg_publication_namespace pn join pg_namespace n on n.oid = pn.pnnspid "
        "where pn.pnpubid = p.oid)"
        if conn.info.server_version >= 150000  # FOR TABLES IN SCHEMA came with 15
        else "'{}'::text[]"
    )
    row = await _fetchone(
        conn,
        f"select p.puballtables, {schemas} from pg_publication p where p.pubname = %s",
        (cfg.publication,),
    )
    if row is None:
        if not cfg.create_publication:
            raise SourceSetupError(
                f"publication {cfg.publication} does not exist and create_publication is false",
                fix=f"CREATE PUBLICATION {sqltext.ident(cfg.publication)} "
                f"FOR TABLE {sqltext.idents(tables)}",
            )
        return None
    all_tables, in_schemas = bool(row[0]), list(row[1] or [])  # type: ignore[call-overload]
    if all_tables or in_schemas:
        _refuse_wide_publication(cfg, all_tables, in_schemas)
        if all_tables:
            return []
    cur = await conn.execute(
        "select schemaname || '.' || tablename from pg_publication_tables where pubname = %s",
        (cfg.publication,),
    )
    published = {str(r[0]) for r in await cur.fetchall()}
    missing = [t for t in tables if t not in published]
    if missing and not cfg.create_publication:
        raise SourceSetupError(
            f"publication {cfg.publication} does not include {', '.join(missing)}",
            fix=f"ALTER PUBLICATION {sqltext.ident(cfg.publication)} "
            f"ADD TABLE {sqltext.idents(missing)}",
        )
    return missing


async def partition_truncate_gaps(
    conn: psycopg.AsyncConnection[tuple[object, ...]], cfg: SourceConfig
) -> dict[str, list[str]]:
    """Partitioned tables among ``cfg.tables`` whose partitions' TRUNCATEs are never sent.

    With ``publish_via_partition_root`` (how walrelay creates publications)
    pgoutput sends a partition's changes as the root's, but skips a TRUNCATE
    of a partition altogether (``pgoutput_truncate``: "Don't send partitions
    if the publication wants to send only the root tables through it"); only
    a TRUNCATE of the root itself arrives. Maps each such root to its partitions.
    """
    row = await _fetchone(
        conn, "select pubviaroot from pg_publication where pubname = %s", (cfg.publication,)
    )
    if row is not None and not row[0]:
        return {}
    cur = await conn.execute(
        """select format('%%I.%%I', n.nspname, c.relname),
                  array(select format('%%I.%%I', pn.nspname, p.relname)
                        from pg_partition_tree(c.oid) t
                        join pg_class p on p.oid = t.relid
                        join pg_namespace pn on pn.oid = p.relnamespace
                        where t.level > 0 order by 1)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where c.relkind = 'p' and n.nspname || '.' || c.relname = any(%s)
           order by 1""",
        (list(cfg.tables),),
    )
    rows = await cur.fetchall()
    return {str(row[0]): [str(p) for p in row[1]] for row in rows}  # type: ignore[attr-defined]


def _refuse_wide_publication(cfg: SourceConfig, all_tables: bool, in_schemas: list[str]) -> None:
    """A wildcard publication decodes and sends every change of every table it
    covers, now and later: refused unless ``source.allow_wide_publication``."""
    what = "FOR ALL TABLES" if all_tables else f"FOR TABLES IN SCHEMA {', '.join(in_schemas)}"
    narrow = f"{cfg.publication}_narrow"[:63]
    if cfg.allow_wide_publication:
        log.warning(
            "publication %s is %s (allowed by source.allow_wide_publication): every change "
            "of those tables is decoded and sent, not only the configured ones",
            cfg.publication,
            what,
        )
        return
    raise SourceSetupError(
        f"publication {cfg.publication} is {what}: the walsender would decode and send every "
        "change of every table it covers (CPU and network on the primary, tables nobody "
        "asked for) — walrelay refuses wildcard publications",
        fix=f"CREATE PUBLICATION {sqltext.ident(narrow)} FOR TABLE {sqltext.idents(cfg.tables)}"
        f"; and set source.publication: {narrow} (or source.allow_wide_publication: true "
        "to accept the risk)",
    )


async def _check_wal_cap(
    conn: psycopg.AsyncConnection[tuple[object, ...]], cfg: SourceConfig
) -> None:
    """No start while ``max_slot_wal_keep_size`` is unlimited, unless
    ``source.allow_unbounded_wal``: a slot left behind would fill pg_wal."""
    row = await _fetchone(conn, "select current_setting('max_slot_wal_keep_size')")
    if row is None or str(row[0]).strip() not in ("-1", "-1MB"):
        return
    if cfg.allow_unbounded_wal:
        log.warning(
            "max_slot_wal_keep_size is unlimited (allowed by source.allow_unbounded_wal): "
            "if walrelay stops or falls behind, slot %s keeps WAL until pg_wal's disk is full",
            cfg.slot,
        )
        return
    raise SourceSetupError(
        "max_slot_wal_keep_size is unlimited (-1) on the source: if walrelay stops or falls "
        f"behind, slot {cfg.slot} keeps WAL until the primary's disk is full — walrelay "
        "refuses to start without a cap",
        fix="ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();"
        " (a size pg_wal's volume can hold; `walrelay doctor` suggests one) — or set "
        "source.allow_unbounded_wal: true to accept the risk",
    )


async def _check_slot(
    conn: psycopg.AsyncConnection[tuple[object, ...]], cfg: SourceConfig
) -> tuple[bool, Lsn | None]:
    """(exists, confirmed_flush_lsn). Raises when the slot cannot be used."""
    row = await _fetchone(
        conn,
        "select plugin, slot_type, database, active_pid, wal_status, confirmed_flush_lsn::text "
        "from pg_replication_slots where slot_name = %s",
        (cfg.slot,),
    )
    if row is None:
        if not cfg.create_slot:
            raise SourceSetupError(
                f"replication slot {cfg.slot} does not exist and create_slot is false",
                fix="SELECT pg_create_logical_replication_slot("
                f"{sqltext.literal(cfg.slot)}, 'pgoutput')",
            )
        return False, None
    plugin, slot_type, database, active_pid, wal_status, confirmed = row
    db_row = await _fetchone(conn, "select current_database()")
    current_db = str(db_row[0]) if db_row else "?"
    if slot_type != "logical" or plugin != "pgoutput":
        raise SourceSetupError(
            f"replication slot {cfg.slot} exists but is a {slot_type} slot using plugin "
            f"{plugin!r}; walrelay needs a logical slot using pgoutput",
            fix="set source.slot to another name, or drop that slot if nothing uses it",
        )
    if database != current_db:
        raise SourceSetupError(
            f"replication slot {cfg.slot} belongs to database {database}, not {current_db}",
            fix="set source.slot to another name, or connect to the slot's database",
        )
    if active_pid is not None:
        raise SlotBusy(
            f"replication slot {cfg.slot} is already streaming to PID {active_pid}",
            fix="stop the other walrelay (or consumer) first, or use another slot",
        )
    if wal_status == "lost":
        raise SlotLost(
            f"replication slot {cfg.slot} has lost WAL it still needed (wal_status 'lost')",
            fix=f"SELECT pg_drop_replication_slot({sqltext.literal(cfg.slot)}) and start again "
            "with a new snapshot of the tables",
        )
    return True, parse_lsn(str(confirmed)) if confirmed else None


async def _make_publication(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    cfg: SourceConfig,
    tables: list[str],
    to_add: list[str] | None,
    info: SourceInfo,
) -> None:
    """Create the publication for ``tables`` (``to_add`` None), or add ``to_add`` to it."""
    if to_add == []:
        return
    listed = sql.SQL(", ").join(
        sql.Identifier(*split_table(t)) for t in (tables if to_add is None else to_add)
    )
    pub = sql.Identifier(cfg.publication)
    if to_add is None:
        await conn.execute(
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
            ).format(pub, listed)
        )
        info.publication_created = True
        log.info("created publication %s for %s", cfg.publication, ", ".join(tables))
    else:
        await conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(pub, listed))
        log.info("added %s to publication %s", ", ".join(to_add), cfg.publication)


async def prepare_source(
    cfg: SourceConfig,
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    *,
    export_snapshot: bool = False,
    renamed: dict[str, str] | None = None,
) -> SourceInfo:
    """Check everything first, then create the publication and the slot if needed.

    With ``export_snapshot`` a new slot is created over a replication connection
    with an exported snapshot, kept open in ``SourceInfo.exported`` for the
    initial copy (walrelay.source.snapshot). ``renamed``: the current name of
    configured tables renamed since (:func:`find_renamed`); ``info.tables``
    stays keyed by the configured name.
    """
    info = SourceInfo(server_version=conn.info.server_version)
    await _check_wal_level(conn)
    await _check_encoding(conn)
    await _check_wal_cap(conn, cfg)
    renamed = renamed or {}
    actual = [renamed.get(name, name) for name in cfg.tables]
    for name, now in zip(cfg.tables, actual, strict=True):
        info.tables[name] = await inspect_table(conn, now, cfg.key_columns.get(name))
    to_add = await _check_publication(conn, cfg, actual)
    for root, parts in (await partition_truncate_gaps(conn, cfg)).items():
        log.warning(
            "%s is partitioned: a TRUNCATE of one of its partitions (%s) is not replicated "
            "(pgoutput publishes partitions through their root and sends only a TRUNCATE "
            "of the root itself); truncate %s, or DELETE from the partition",
            root,
            ", ".join(parts) or "none yet",
            root,
        )
    slot_exists, confirmed = await _check_slot(conn, cfg)
    info.confirmed_flush_lsn = confirmed

    pub = sql.Identifier(cfg.publication)
    try:
        try:
            await _make_publication(conn, cfg, actual, to_add, info)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            # Another walrelay (another slot on this publication) created it, or
            # added a table to it, between our check and our statement: check
            # what it holds now (it must still be one we accept), then finish.
            # DuplicateObject if its statement had committed before ours began;
            # UniqueViolation (on the catalog's index) if ours waited for its
            # transaction to commit.
            to_add = await _check_publication(conn, cfg, actual)
            await _make_publication(conn, cfg, actual, to_add, info)
    except psycopg.errors.InsufficientPrivilege as e:
        raise SourceSetupError(
            f"cannot create or alter publication {cfg.publication}: {e.diag.message_primary}",
            fix="run walrelay as the tables' owner, or create the publication as a superuser",
        ) from None
    if not slot_exists:
        try:
            if export_snapshot:
                from walrelay.model import format_lsn

                info.exported = await create_exported_slot(cfg.dsn_value, cfg.slot)
                row: tuple[object, ...] | None = (format_lsn(info.exported.consistent_point),)
            else:
                row = await _fetchone(
                    conn,
                    "select lsn::text from pg_create_logical_replication_slot(%s, 'pgoutput')",
                    (cfg.slot,),
                )
        except psycopg.Error as e:
            if info.publication_created:
                await conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(pub))
                info.publication_created = False
            if isinstance(e, psycopg.errors.DuplicateObject):
                raise SlotBusy(
                    f"replication slot {cfg.slot} was created by another process just now",
                    fix="make sure only one walrelay runs per slot",
                ) from None
            raise SourceSetupError(
                f"cannot create replication slot {cfg.slot}: {e.diag.message_primary or e}",
                fix="grant the REPLICATION attribute (ALTER ROLE ... REPLICATION) and check "
                "max_replication_slots",
            ) from None
        info.slot_created = True
        info.confirmed_flush_lsn = parse_lsn(str(row[0])) if row else None
        log.info("created replication slot %s (pgoutput)", cfg.slot)
    return info


async def slot_usable(conn: psycopg.AsyncConnection[tuple[object, ...]], slot: str) -> bool:
    """The slot exists and has not lost WAL it needs."""
    row = await _fetchone(
        conn,
        "select wal_status from pg_replication_slots where slot_name = %s",
        (slot,),
    )
    return row is not None and row[0] != "lost"


_NAME_OF_OID = """
select n.nspname || '.' || c.relname from pg_class c
join pg_namespace n on n.oid = c.relnamespace where c.oid = %s
"""


async def find_renamed(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    tables: list[str],
    recorded: dict[str, int],
) -> dict[str, str]:
    """Configured tables that no longer exist by their name but whose recorded
    OID (walrelay.state.tables) does, under another name: configured -> current."""
    out: dict[str, str] = {}
    for name in tables:
        oid = recorded.get(name)
        if oid is None or await _fetchone(conn, _TABLE_QUERY, split_table(name)) is not None:
            continue
        row = await _fetchone(conn, _NAME_OF_OID, (oid,))
        if row is None:
            continue  # dropped: inspect_table says so
        out[name] = str(row[0])
        log.warning(
            "table %s was renamed to %s (same OID %d): following it; rename it in the config "
            "(source.tables, destinations[].tables)",
            name,
            out[name],
            oid,
        )
    return out


_ACTIVE_PID = re.compile(r"active for PID (\d+)")


def slot_busy_from_error(slot: str, message: str) -> SlotBusy | None:
    """Turn the server's 'slot is active for PID n' error into :class:`SlotBusy`."""
    m = _ACTIVE_PID.search(message)
    if not m:
        return None
    return SlotBusy(
        f"replication slot {slot} is already streaming to PID {m.group(1)}",
        fix="stop the other walrelay (or consumer) first, or use another slot",
    )


# -- what can change under a running engine -----------------------------------


@dataclass(frozen=True)
class SourceState:
    """The slot, the publication and the followed tables as the server has them now."""

    slot_exists: bool
    wal_status: str | None
    publication_exists: bool
    names: dict[int, str]
    """Current ``schema.table`` of each followed OID still present."""
    published: frozenset[int]
    """Followed OIDs the publication includes."""


_STATE_QUERY = """
select
  (select wal_status from pg_replication_slots where slot_name = %(slot)s),
  exists(select from pg_replication_slots where slot_name = %(slot)s),
  exists(select from pg_publication where pubname = %(pub)s)
"""

_TABLES_QUERY = """
select c.oid, n.nspname || '.' || c.relname,
  exists(
    select from pg_publication_tables pt
    where pt.pubname = %(pub)s and pt.schemaname = n.nspname and pt.tablename = c.relname
  )
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.oid = any(%(oids)s)
"""


async def read_source_state(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    *,
    slot: str,
    publication: str,
    oids: list[int],
) -> SourceState:
    """One look at what a running engine depends on (walrelay.engine.watch)."""
    params = {"slot": slot, "pub": publication, "oids": oids}
    row = await _fetchone(conn, _STATE_QUERY, params)  # type: ignore[arg-type]
    assert row is not None
    cur = await conn.execute(_TABLES_QUERY, params)
    names: dict[int, str] = {}
    published: set[int] = set()
    for oid, name, in_pub in await cur.fetchall():
        names[int(str(oid))] = str(name)
        if in_pub:
            published.add(int(str(oid)))
    return SourceState(
        slot_exists=bool(row[1]),
        wal_status=None if row[0] is None else str(row[0]),
        publication_exists=bool(row[2]),
        names=names,
        published=frozenset(published),
    )
