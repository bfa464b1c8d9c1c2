"""Start-up checks of every node and what the appliers need to know of each table.

Everything is checked before anything is created: ``track_commit_timestamp``,
every table present with a primary key, the same key on every node, and the
same type for every column two nodes share. Each failure is one
:class:`~walrelay.errors.ConfigError` naming the node, the table and the column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from walrelay import sqltext
from walrelay.config import SourceConfig
from walrelay.errors import ConfigError, WalrelayError
from walrelay.source.slot import SourceInfo, prepare_source, split_table
from walrelay.state.migrations import migrate
from walrelay.state.sync import note_previous_function
from walrelay.sync.config import SyncSettings

__all__ = [
    "NodeTables",
    "SequenceRange",
    "TableMeta",
    "check_nodes",
    "inspect_node",
    "overlapping_sequences",
    "prepare_node",
    "read_sequences",
]

log = logging.getLogger("walrelay.sync")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class TableMeta:
    """A synced table on one node: columns (name -> SQL type) and primary key."""

    name: str
    columns: dict[str, str]
    key: tuple[str, ...]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(*split_table(self.name))


NodeTables = dict[str, TableMeta]

_COLUMNS = """
select a.attname, format_type(a.atttypid, a.atttypmod)
from pg_attribute a
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
order by a.attnum
"""
_KEY = """
select a.attname from pg_index i
join unnest(i.indkey) with ordinality k(attnum, n) on true
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
where i.indrelid = %s and i.indisprimary order by k.n
"""


async def inspect_node(conn: Conn, node: str, tables: list[str]) -> NodeTables:
    cur = await conn.execute("select current_setting('track_commit_timestamp')")
    row = await cur.fetchone()
    if row is None or row[0] != "on":
        raise ConfigError(
            f"node {node}: track_commit_timestamp is off; conflicts cannot be detected "
            "without commit times",
            fix="ALTER SYSTEM SET track_commit_timestamp = on; then restart that server",
        )
    out: NodeTables = {}
    for name in tables:
        schema, table = split_table(name)
        cur = await conn.execute(
            "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')",
            (schema, table),
        )
        found = await cur.fetchone()
        if found is None:
            raise ConfigError(
                f"node {node}: table {name} does not exist",
                fix=f"create {name} on node {node} (same primary key), or remove it from tables",
            )
        oid = int(found[0])
        cur = await conn.execute(_COLUMNS, (oid,))
        columns = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
        cur = await conn.execute(_KEY, (oid,))
        key = tuple(str(r[0]) for r in await cur.fetchall())
        if not key:
            raise ConfigError(
                f"node {node}: table {name} has no primary key; synced rows are matched by it",
                fix=f"ALTER TABLE {sqltext.qualified(name)} ADD PRIMARY KEY (...) on node {node}",
            )
        out[name] = TableMeta(name, columns, key)
    return out


def check_nodes(nodes: dict[str, NodeTables]) -> None:
    """The same key on every node, the same type for every shared column."""
    first = next(iter(nodes))
    for name, meta in nodes[first].items():
        for node, tables in nodes.items():
            other = tables[name]
            for col in meta.key:
                if col not in other.columns:
                    raise ConfigError(
                        f"node {node}: table {name} has no column {col}, part of its key on "
                        f"node {first}",
                        fix=f"add column {col} to {name} on node {node}",
                    )
            if other.key != meta.key:
                raise ConfigError(
                    f"node {node}: table {name} has primary key ({', '.join(other.key)}), "
                    f"node {first} has ({', '.join(meta.key)})",
                    fix="give the table the same primary key on every node",
                )
    for name in nodes[first]:
        seen: dict[str, tuple[str, str]] = {}  # column -> (type, node)
        for node, tables in nodes.items():
            for col, typ in tables[name].columns.items():
                if col in seen and seen[col][0] != typ:
                    raise ConfigError(
                        f"node {node}: column {name}.{col} is {typ}, on node {seen[col][1]} "
                        f"it is {seen[col][0]}",
                        fix=f"ALTER TABLE {sqltext.qualified(name)} ALTER COLUMN "
                        f"{sqltext.ident(col)} TYPE {seen[col][0]} on node {node}",
                    )
                seen.setdefault(col, (typ, node))


async def prepare_node(
    conn: Conn,
    settings: SyncSettings,
    node: str,
    tables: NodeTables,
    *,
    export_snapshot: bool = False,
) -> SourceInfo:
    """State schema, delete-tombstone triggers, publication and slot of one node
    (with ``export_snapshot``, a new slot's snapshot stays open in the result)."""
    schema = settings.state_schema
    await migrate(conn, schema)
    for meta in tables.values():
        keys = sql.SQL(", ").join(sql.Literal(c) for c in meta.key)
        try:
            await conn.execute(
                sql.SQL(
                    "create or replace trigger walrelay_sync_tombstone after delete on {} "
                    "for each row execute function {}.sync_record_delete({})"
                ).format(meta.ident, sql.Identifier(schema), keys)
            )
            create, function = note_previous_function(
                sql.Identifier(schema), meta.name, meta.ident, list(meta.key)
            )
            await conn.execute(create)
            await conn.execute(
                sql.SQL(
                    "create or replace trigger walrelay_sync_previous "
                    "before update or delete on {} for each row execute function {}()"
                ).format(meta.ident, function)
            )
        except psycopg.errors.InsufficientPrivilege:
            raise ConfigError(
                f"node {node}: cannot create the delete-tombstone trigger on {meta.name}",
                fix=f"run walrelay sync as the owner of {meta.name} on node {node}",
            ) from None
    src = SourceConfig.model_validate(
        {
            "dsn": settings.nodes[node].dsn_value,
            "slot": settings.slot(node),
            "publication": settings.publication,
            "tables": list(tables),
        }
    )
    try:
        return await prepare_source(src, conn, export_snapshot=export_snapshot)
    except WalrelayError as e:
        e.message = f"node {node}: {e.message}"
        raise


@dataclass(frozen=True)
class SequenceRange:
    """The values a column's sequence can give on one node."""

    node: str
    table: str
    column: str
    sequence: str
    start: int
    increment: int
    minimum: int
    maximum: int
    identity: bool = False  # an identity column (else serial or a DEFAULT nextval)
    last_value: int | None = None  # None: never used (or not readable)


_SEQUENCES = """
select a.attname, s.seqrelid::regclass::text, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       a.attidentity <> '', pg_sequence_last_value(s.seqrelid)
from pg_attribute a
join pg_sequence s on s.seqrelid = pg_get_serial_sequence(%s, a.attname)::regclass
where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped
"""


def read_sequences(
    conn: psycopg.Connection[Any], node: str, tables: list[str]
) -> list[SequenceRange]:
    """The sequences feeding columns of the synced tables (serial and identity)."""
    out = []
    cur = conn.cursor(row_factory=tuple_row)
    for table in tables:
        q = sqltext.qualified(table)
        for col, seq, start, inc, lo, hi, ident, last in cur.execute(_SEQUENCES, (q, q)).fetchall():
            out.append(
                SequenceRange(node, table, str(col), str(seq), start, inc, lo, hi, ident, last)
            )
    return out


def overlapping_sequences(ranges: list[SequenceRange]) -> list[tuple[SequenceRange, SequenceRange]]:
    """Pairs of nodes whose sequences for the same column can give the same value:
    the progressions ``start + k * increment`` meet (the starts differ by a multiple
    of the increments' gcd) inside both nodes' min..max."""
    out = []
    for i, x in enumerate(ranges):
        for y in ranges[i + 1 :]:
            if (x.table, x.column) != (y.table, y.column) or x.node == y.node:
                continue
            if max(x.minimum, y.minimum) > min(x.maximum, y.maximum):
                continue
            if (x.start - y.start) % math.gcd(x.increment, y.increment) == 0:
                out.append((x, y))
    return out
