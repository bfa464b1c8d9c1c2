"""Every value exactly as PostgreSQL has it: walrelay against ``test_decoding``.

One workload (:mod:`tests.integration.fidelity_workload`: PostgreSQL's
regression type matrix, test_decoding's TOAST/key/truncate/message cases)
runs once under database settings that change how values print. Two slots
were created before it: walrelay streams one into a file, PostgreSQL's own
``test_decoding`` plugin decodes the other (same WAL). The two are compared
change by change: table, op, every column value, old key/row, TOAST
"unchanged" markers, truncate flags, logical messages.

A value is compared *through PostgreSQL*: walrelay's JSON value (as text: a
JSON string's content, a number's exact literal, an array rebuilt as an array
literal, a json document's text) and test_decoding's literal are both cast to
the column's type, and the casts' text output compared in a session with
fixed settings -- stricter than ``=`` (``1.50`` is not ``1.5``, a box is not
its area) and defined for types without ``=`` (json: compared as jsonb, so
duplicate keys of a json column are not compared here; the unit tests pin
that its text is kept). A mutation check proves the comparison notices one
altered value and one lost TOAST marker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration import fidelity_workload as workload
from tests.integration.support import count_lines, execute, running_engine
from tests.waiting import wait_for
from walrelay.config import parse_config
from walrelay.source.slot import prepare_source
from walrelay.source.types import MAX_JSON_DEPTH, json_depth

SLOT_TD = "fid_td"
SLOT_WR = "fid_wr"
PUBLICATION = "fid_pub"
MESSAGE_PREFIX = "fid"

# The session test_decoding prints in and values are compared in: exact
# floats, ISO dates, qualified names; the database's own settings are not used.
REFERENCE = {
    "extra_float_digits": "3",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "search_path": "pg_catalog",
}


class Num(str):
    """A JSON number's exact literal (json.loads would round it)."""


UNCHANGED = object()  # test_decoding's unchanged-toast-datum


@dataclass
class TdChange:
    """One change as test_decoding printed it (values as literal text)."""

    op: str
    table: str = ""
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None
    tables: list[str] = field(default_factory=list)
    flags: str = ""
    prefix: str = ""
    content: bytes = b""


# -- test_decoding's output -------------------------------------------------------


def _tuple(text: str, pos: int) -> tuple[dict[str, Any], int]:
    """``name[type]:value ...`` from ``pos`` up to the end or `` new-tuple:``."""
    values: dict[str, Any] = {}
    while pos < len(text) and not text.startswith(" new-tuple:", pos):
        assert text[pos] == " ", text[pos : pos + 40]
        open_ = text.index("[", pos)
        name = text[pos + 1 : open_]
        pos = text.index("]:", open_) + 2
        if text[pos] == "'" or text.startswith("B'", pos):
            pos += 1 if text[pos] == "'" else 2
            chunks = []
            while True:
                end = text.index("'", pos)
                chunks.append(text[pos:end])
                if text.startswith("''", end):
                    chunks.append("'")
                    pos = end + 2
                    continue
                pos = end + 1
                break
            values[name] = "".join(chunks)
        else:
            end = text.find(" ", pos)
            end = len(text) if end < 0 else end
            literal = text[pos:end]
            pos = end
            values[name] = (
                None
                if literal == "null"
                else UNCHANGED
                if literal == "unchanged-toast-datum"
                else literal
            )
    return values, pos


def parse_test_decoding(rows: Sequence[bytes], tables: set[str]) -> list[TdChange]:
    out: list[TdChange] = []
    for data in rows:
        if data.startswith(b"message: "):
            head, _, content = data.partition(b" content:")
            fields = head.decode()
            prefix = fields.split(" prefix: ", 1)[1].split(", sz: ", 1)[0]
            if prefix == MESSAGE_PREFIX:
                assert "transactional: 1" in fields
                out.append(TdChange("message", prefix=prefix, content=content))
            continue
        text = data.decode()
        if not text.startswith("table "):
            continue  # BEGIN / COMMIT
        names, _, rest = text[6:].partition(": ")
        op, _, rest = rest.partition(":")
        if op == "TRUNCATE":
            listed = names.split(", ")
            if set(listed) <= tables:
                out.append(TdChange("truncate", tables=listed, flags=rest.strip()))
            continue
        if names not in tables:
            continue  # walrelay's own tables
        change = TdChange(op.lower(), names)
        if op == "UPDATE" and rest.startswith(" old-key:"):
            change.old, pos = _tuple(rest, len(" old-key:"))
            change.new, _ = _tuple(rest, pos + len(" new-tuple:"))
        elif op == "DELETE":
            change.old, _ = _tuple(rest, 0) if rest != " (no-tuple-data)" else ({}, 0)
        else:
            change.new, _ = _tuple(rest, 0)
        out.append(change)
    return out


# -- walrelay's JSON values as PostgreSQL input text ----------------------------------


def _dump(value: Any) -> str:
    """JSON text of a parsed value, numbers as their exact literals (no recursion:
    documents are up to MAX_JSON_DEPTH deep)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Token):
            out.append(item.text)
        elif isinstance(item, Num):
            out.append(str(item))
        elif isinstance(item, dict | list):
            is_dict = isinstance(item, dict)
            parts: list[Any] = [_Token("{" if is_dict else "[")]
            entries = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
            for i, (k, v) in enumerate(entries):
                if i:
                    parts.append(_Token(","))
                if is_dict:
                    parts.append(_Token(json.dumps(k) + ":"))
                parts.append(v)
            parts.append(_Token("}" if is_dict else "]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item))
    return "".join(out)


@dataclass
class _Token:
    text: str


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return _dump(value)
    return str(value)


def _array_literal(value: list[Any], json_elements: bool, delimiter: str) -> str:
    parts = []
    for v in value:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, list) and not json_elements:
            parts.append(_array_literal(v, json_elements, delimiter))
        else:
            text = _dump(v) if json_elements else _scalar(v)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + delimiter.join(parts) + "}"


def _same_json(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    parse = json.JSONDecoder(parse_float=Num, parse_int=Num).decode
    return _dump(parse(a)) == _dump(parse(b))


@dataclass
class ColumnType:
    name: str  # format_type with typmod
    kind: str  # scalar | json | array | json_array
    delimiter: str = ","  # of array elements (box: ';')

    def cast_to(self) -> str:
        return {"json": "jsonb", "json_array": "jsonb[]"}.get(self.kind, self.name)

    def text(self, value: Any) -> str | None:
        """walrelay's JSON value as input text for the column's type."""
        if value is None:
            return None
        if self.kind == "json":
            deep = (
                isinstance(value, str)
                and json_depth(value.encode("utf-8", "surrogatepass")) > MAX_JSON_DEPTH
            )
            if deep and not isinstance(value, Num):
                return value  # a deep document arrives as its text
            return _dump(value)
        if self.kind in ("array", "json_array") and isinstance(value, list):
            return _array_literal(value, self.kind == "json_array", self.delimiter)
        return _scalar(value)


def column_types(
    conn: psycopg.Connection[Any], tables: Sequence[str]
) -> dict[str, dict[str, ColumnType]]:
    out: dict[str, dict[str, ColumnType]] = {}
    for table in tables:
        rows = conn.execute(
            """select a.attname, format_type(a.atttypid, a.atttypmod), t.typname,
                      e.typname, e.typdelim
               from pg_attribute a join pg_type t on t.oid = a.atttypid
               left join pg_type e on e.oid = t.typelem and t.typcategory = 'A'
               where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped""",
            (table,),
        ).fetchall()
        types = {}
        # Domains, enums, composites (and arrays of them) arrive as text.
        for name, type_name, own, element, delimiter in rows:
            if own in ("json", "jsonb"):
                kind = "json"
            elif element in ("json", "jsonb"):
                kind = "json_array"
            elif element is not None:
                kind = "array"
            else:
                kind = "scalar"
            types[name] = ColumnType(type_name, kind, delimiter or ",")
        out[table] = types
    return out


# -- the comparison ------------------------------------------------------------------


class Comparison:
    """Compares walrelay's events with test_decoding's changes; collects mismatches."""

    def __init__(self, conn: psycopg.Connection[Any], types: dict[str, dict[str, ColumnType]]):
        self.conn = conn
        self.types = types
        self.mismatches: list[str] = []

    def values(self, where: str, table: str, mine: dict[str, Any], theirs: dict[str, Any]) -> None:
        pairs = []
        for name, literal in theirs.items():
            if literal is UNCHANGED:
                continue
            ctype = self.types[table][name]
            mine_text = ctype.text(mine.get(name))
            pairs.append((name, ctype.cast_to(), mine_text, literal))
        if not pairs:
            return
        query = sql.SQL("select array[{}]").format(
            sql.SQL(", ").join(
                sql.SQL("(%s::{t})::text is not distinct from (%s::{t})::text").format(
                    t=sql.SQL(cast)
                )
                for _, cast, _, _ in pairs
            )
        )
        params = [p for _, _, mine_text, literal in pairs for p in (mine_text, literal)]
        result: list[bool]
        try:
            with self.conn.transaction():
                (result,) = self.conn.execute(query, params).fetchone() or ([],)
        except psycopg.Error:
            result = []
            for name, cast, mine_text, literal in pairs:
                try:
                    with self.conn.transaction():
                        row = self.conn.execute(
                            sql.SQL(
                                "select (%s::{t})::text is not distinct from (%s::{t})::text"
                            ).format(t=sql.SQL(cast)),
                            (mine_text, literal),
                        ).fetchone()
                    result.append(bool(row and row[0]))
                except psycopg.Error as exc:
                    if self.types[table][name].name == "json":
                        # json that jsonb refuses (a lone surrogate escape):
                        # compared parsed, numbers as their literals
                        result.append(_same_json(mine_text, literal))
                        continue
                    self.mismatches.append(
                        f"{where} {name}: {mine_text!r} does not read back as {cast}: "
                        f"{exc.diag.message_primary}"
                    )
                    result.append(True)
        for (name, cast, mine_text, literal), same in zip(pairs, result, strict=True):
            if not same:
                self.mismatches.append(
                    f"{where} {name} ({cast}): walrelay {mine_text!r} != test_decoding {literal!r}"
                )

    def row(self, where: str, table: str, event: dict[str, Any], td: TdChange) -> None:
        record = event.get("record")
        if td.new is not None:
            if record is None:
                self.mismatches.append(f"{where}: no record")
                return
            td_unchanged = sorted(n for n, v in td.new.items() if v is UNCHANGED)
            if sorted(event.get("unchanged", [])) != td_unchanged:
                self.mismatches.append(
                    f"{where}: unchanged {event.get('unchanged')} != test_decoding {td_unchanged}"
                )
            if set(record) | set(event.get("unchanged", [])) != set(td.new):
                self.mismatches.append(f"{where}: columns {sorted(record)} != {sorted(td.new)}")
            self.values(where, table, record, td.new)
        old = event.get("old")
        if td.old is None and td.op != "delete":
            if old is not None:
                self.mismatches.append(f"{where}: old {old} but test_decoding sent none")
            return
        if old is None:
            if td.old:
                self.mismatches.append(f"{where}: no old row, test_decoding has {td.old}")
            return
        # test_decoding leaves NULLs out of old tuples
        extra = [n for n, v in old.items() if n not in (td.old or {}) and v is not None]
        if extra:
            self.mismatches.append(f"{where}: old has {extra} test_decoding has not")
        self.values(where + " old", table, old, td.old or {})

    def run(self, events: Sequence[dict[str, Any]], changes: Sequence[TdChange]) -> list[str]:
        self.mismatches = []
        if len(events) != len(changes):
            self.mismatches.append(f"{len(events)} events, test_decoding {len(changes)} changes")
        for i, (event, td) in enumerate(zip(events, changes, strict=False)):
            where = f"#{i} {td.op} {td.table or td.tables}"
            if event["op"] != td.op:
                self.mismatches.append(f"{where}: walrelay op {event['op']}")
                continue
            if td.op == "truncate":
                flags = ("restart_seqs" if event["restart_identity"] else "") + (
                    " cascade" if event["cascade"] else ""
                )
                if event["tables"] != td.tables or (flags.strip() or "(no-flags)") != td.flags:
                    self.mismatches.append(f"{where}: walrelay {event['tables']} {flags!r}")
            elif td.op == "message":
                content = event["content"]
                raw = (
                    content.encode()
                    if event["content_encoding"] == "utf-8"
                    else bytes.fromhex(content[2:])
                )
                if event["prefix"] != td.prefix or raw != td.content:
                    self.mismatches.append(f"{where}: walrelay {event['prefix']} {content!r}")
            elif event["table"] != td.table:
                self.mismatches.append(f"{where}: walrelay table {event['table']}")
            else:
                self.row(where, td.table, event, td)
        return self.mismatches


# -- the run ------------------------------------------------------------------------


def _event_order(event: dict[str, Any]) -> tuple[int, int]:
    lsn, _, seq = event["id"].partition("/")
    return int(lsn, 16), int(seq)


def read_events(path: Path) -> list[dict[str, Any]]:
    events = [
        json.loads(line, parse_float=Num, parse_int=Num) for line in path.read_bytes().splitlines()
    ]
    for event in events:
        # the envelope's own numbers back to ints (only column values stay Num)
        event["xid"] = int(event["xid"])
    return sorted(events, key=_event_order)


def prepare(db: str) -> None:
    """Settings, schema, publication and both slots; then the workload."""
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    with psycopg.connect(db, autocommit=True) as conn:
        for name, value in workload.DATABASE_SETTINGS.items():
            conn.execute(
                sql.SQL("alter database {} set {} = {}").format(
                    sql.Identifier(str(dbname)),
                    sql.Identifier(name),
                    # a list setting is a list of literals
                    sql.SQL(", ").join(sql.Literal(v.strip()) for v in value.split(","))
                    if name == "search_path"
                    else sql.Literal(value),
                )
            )
        for stmt in workload.DDL:
            conn.execute(stmt)
        conn.execute(
            sql.SQL("create publication {} for table {} with (publish_via_partition_root)").format(
                sql.Identifier(PUBLICATION),
                sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in workload.TABLES),
            )
        )
        conn.execute("select pg_create_logical_replication_slot(%s, 'test_decoding')", (SLOT_TD,))
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT_WR,))
    with psycopg.connect(db, autocommit=True) as conn:  # the database's settings apply
        assert conn.execute("show extra_float_digits").fetchone() == ("-15",)
        for stmt in workload.WORKLOAD:
            conn.execute(stmt)


def reference_session(db: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db, autocommit=True)
    for name, value in REFERENCE.items():
        conn.execute(sql.SQL("set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    return conn


def decoded_changes(conn: psycopg.Connection[Any]) -> list[TdChange]:
    rows = conn.execute(
        "select data from pg_logical_slot_peek_binary_changes(%s, null, null, "
        "'include-xids', '0', 'skip-empty-xacts', '1')",
        (SLOT_TD,),
    ).fetchall()
    return parse_test_decoding([bytes(r[0]) for r in rows], set(workload.TABLES))


async def stream_to_file(db: str, slot: str, out: Path, count: int, *, snapshot: str) -> None:
    """Run walrelay (in process, file sink) until ``count`` events are in ``out``."""
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "slot": slot,
                "publication": PUBLICATION,
                "tables": workload.TABLES,
                "status_interval": 1,
            },
            "destinations": [
                {"name": "file", "sink": {"type": "file", "path": str(out)}, "snapshot": snapshot}
            ],
            "heartbeat": {"enabled": False},
            "shutdown_timeout": 10,
        },
        "(test)",
    )
    async with running_engine(config):
        await wait_for(lambda: count_lines(out) >= count, within=30, what=f"{count} events")


async def test_walrelay_emits_what_test_decoding_decodes(db: str, tmp_path: Path) -> None:
    prepare(db)
    with reference_session(db) as conn:
        changes = decoded_changes(conn)
        assert len(changes) > 40
        out = tmp_path / "events.jsonl"
        await stream_to_file(db, SLOT_WR, out, len(changes), snapshot="never")
        events = read_events(out)
        comparison = Comparison(conn, column_types(conn, workload.TABLES))
        mismatches = comparison.run(events, changes)
        assert not mismatches, "\n".join(mismatches)

        # Poison values (issue 18): deep jsonb/json were delivered, never a crash;
        # deeper than MAX_JSON_DEPTH as their text.
        deep = {
            int(e["record"]["id"]): e["record"]
            for e in events
            if e["table"] == "fid.deep" and e["op"] == "insert"
        }
        assert sorted(deep) == [300, 500, 501, 5000]
        assert isinstance(deep[500]["jb"], list) and isinstance(deep[500]["j"], dict)
        assert isinstance(deep[501]["jb"], str) and isinstance(deep[5000]["j"], str)

        # Mutation check: the comparison notices one altered value, one lost marker.
        first = next(i for i, e in enumerate(events) if e["table"] == "fid.matrix")
        mutated = list(events)
        event = events[first]
        mutated[first] = {**event, "record": {**event["record"], "f8": Num("1.2345678901233e+200")}}
        found = comparison.run(mutated, changes)
        assert len(found) == 1 and " f8 " in found[0], found
        toast = next(i for i, e in enumerate(events) if e.get("unchanged"))
        mutated = list(events)
        event = events[toast]
        mutated[toast] = {**event, "record": {**event["record"], "big1": None}, "unchanged": []}
        assert any("unchanged" in m for m in comparison.run(mutated, changes))


async def test_partition_truncate_gap_is_named_at_start(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # pgoutput never sends a TRUNCATE of one partition under publish_via_partition_root
    execute(
        db,
        "create table m (id int, at date, primary key (id, at)) partition by range (at)",
        "create table m_2024 partition of m for values from ('2024-01-01') to ('2025-01-01')",
        "create table m_2025 partition of m for values from ('2025-01-01') to ('2026-01-01')",
        "create table plain (id int primary key)",
    )
    config = parse_config(
        {
            "source": {"dsn": db, "tables": ["public.m", "public.plain"], "slot": "part"},
            "destinations": [{"name": "out", "sink": {"type": "stdout"}}],
        },
        "(test)",
    )
    caplog.set_level(logging.WARNING, "walrelay.source.slot")
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await prepare_source(config.source, conn)
    warnings = [r.getMessage() for r in caplog.records if "TRUNCATE" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("public.m is partitioned: a TRUNCATE of one of its partitions")
    assert "(public.m_2024, public.m_2025)" in warnings[0]


async def test_snapshot_rows_read_back_equal(db: str, tmp_path: Path) -> None:
    # The initial snapshot reads values over other connections (COPY-free
    # SELECT col::text): under the same fixed settings, they read back equal too.
    prepare(db)
    with reference_session(db) as conn:
        types = column_types(conn, workload.TABLES)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for table, columns in types.items():
            query = sql.SQL("select {} from {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(*table.split(".")),
            )
            for row in conn.execute(query).fetchall():
                rows[(table, str(row[0]))] = dict(zip(columns, row, strict=True))
        assert len(rows) > 15
        out = tmp_path / "snapshot.jsonl"
        await stream_to_file(db, "fid_snapshot", out, len(rows), snapshot="initial")
        events = read_events(out)
        assert {e["op"] for e in events} == {"read"}
        assert sorted((e["table"], str(e["record"]["id"])) for e in events) == sorted(rows)
        comparison = Comparison(conn, types)
        for event in events:
            table = event["table"]
            expected = rows[(table, str(event["record"]["id"]))]
            comparison.values(f"read {table}", table, event["record"], expected)
        assert not comparison.mismatches, "\n".join(comparison.mismatches)
