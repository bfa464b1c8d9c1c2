"""``format: debezium`` field for field against what real Debezium emitted.

tests/data/debezium/golden.jsonl was written by Debezium 3.6.1's embedded
engine (PostgreSQL connector, pgoutput, JsonConverter schemas.enable=false)
on the workload of setup.sql / snapshot.sql / stream.sql, by
scripts/debezium-golden/run.py. This test runs walrelay on the same workload
and compares every record: key and value, every field, except the ones that
must differ (listed in README "format: debezium", kept differences):
timestamps, LSNs, transaction ids, the connector version, Debezium's
first/last snapshot markers, and the key-changing UPDATE (Debezium: delete +
tombstone + create; walrelay: one ``u`` event).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tests.integration.support import make_config, running_engine, wait_for
from walrelay.model import Event
from walrelay.sinks.memory import MemorySink

DATA = Path(__file__).resolve().parent.parent / "data" / "debezium"
TABLES = [
    "public.types",
    "public.plain",
    "public.full_row",
    "public.toasted",
    "public.two_keys",
    "public.zz_end",
]
# Fields whose values must differ: when and where (WAL position, xid) a run happened.
_SOURCE_VARYING = ("version", "ts_ms", "ts_us", "ts_ns", "sequence", "txId", "lsn")
_SNAPSHOT_MARKERS = {"first", "first_in_data_collection", "last_in_data_collection", "last"}


def statements(text: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    return out


def normalize(key: Any, value: Any) -> dict[str, Any]:
    value = copy.deepcopy(value)
    for name in ("ts_ms", "ts_us", "ts_ns"):
        value.pop(name, None)
    source = value["source"]
    for name in _SOURCE_VARYING:
        assert name in source, f"source.{name} missing"
        source.pop(name)
    if source["snapshot"] in _SNAPSHOT_MARKERS:
        source["snapshot"] = "true"
    return {"key": key, "value": value}


# Kept differences (README "format: debezium"): walrelay's envelope carries a
# domain's value and an array of a user-defined type as PostgreSQL's text (it
# does not look up a domain's base type or a custom array's element type).
_AS_TEXT = {
    "c_domain": lambda v: str(v),
    "c_enum_arr": lambda v: "{" + ",".join(v) + "}",
}


def as_text(row: dict[str, Any] | None) -> None:
    for name, text in _AS_TEXT.items():
        if row is not None and row.get(name) is not None:
            row[name] = text(row[name])


def golden_records() -> list[dict[str, Any]]:
    """Debezium's records, tombstones left out (checked apart), and its delete +
    create of a key-changing UPDATE as the one ``u`` event walrelay emits."""
    lines = (DATA / "golden.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines if line.strip()]
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        value = rec["value"]
        if value is not None:
            as_text(value.get("after"))
            as_text(value.get("before"))
        if value is None:
            assert records[i - 1]["value"]["op"] == "d", "a tombstone follows a delete"
            assert records[i - 1]["key"] == rec["key"]
            continue
        if value.get("op") == "c" and out:
            prev = out[-1]["value"]
            if (
                prev.get("op") == "d"
                and prev["source"]["table"] == value["source"]["table"]
                and records[i - 2]["value"]["source"]["txId"] == value["source"]["txId"]
            ):
                merged = dict(value, op="u", before=prev["before"])
                out[-1] = normalize(rec["key"], merged)
                continue
        out.append(normalize(rec["key"], value))
    return out


Transaction = tuple[int | None, list[tuple[str, int]], list[tuple[str, int, int]]]
"""(END's event_count, its data collections, each data event's (op, total_order,
data_collection_order)): what the comparison of transaction metadata looks at."""


def _collections(end: dict[str, Any]) -> list[tuple[str, int]]:
    # Debezium names a message's collection by a Java object's toString
    # (LogicalDecodingMessageId@<hash>); walrelay calls it "message".
    out = []
    for dc in end["data_collections"]:
        name = dc["data_collection"]
        out.append(("message" if "LogicalDecodingMessageId" in name else name, dc["event_count"]))
    return sorted(out)


def golden_transactions() -> list[Transaction]:
    """Debezium's transactions (provide.transaction.metadata=true), snapshot rows,
    tombstones and non-transactional messages left out; a delete + create of one
    key-changing update counted as the one ``u`` walrelay emits."""
    lines = (DATA / "golden-transactions.jsonl").read_bytes().splitlines()
    out: list[Transaction] = []
    events: list[tuple[str, int, int]] = []
    tables: list[str] = []
    for line in lines:
        rec = orjson.loads(line)
        value = rec["value"]
        if value is None or (value.get("transaction") is None and "status" not in value):
            continue
        if value.get("status") == "BEGIN":
            events, tables = [], []
        elif value.get("status") == "END":
            count, collections = value["event_count"], _collections(value)
            if [e[0] for e in events[-2:]] == ["d", "c"] and tables[-1] == tables[-2]:
                events[-2:] = [("u", events[-2][1], events[-2][2])]
                count -= 1
                collections = [(n, c - 1 if n == tables[-1] else c) for n, c in collections]
            out.append((count, collections, events))
        else:
            tx = value["transaction"]
            events.append((value["op"], tx["total_order"], tx["data_collection_order"]))
            source = value["source"]
            tables.append(f"{source['schema']}.{source['table']}" if source["table"] else "")
    return out


def walrelay_transactions(events: list[Event]) -> list[Transaction]:
    out: list[Transaction] = []
    data: list[tuple[str, int, int]] = []
    for event in events:
        value = orjson.loads(event.body)
        if event.op == "begin":
            assert event.rendering is not None
            assert orjson.loads(event.rendering.key or b"{}") == {"id": value["id"]}
            assert (value["status"], value["event_count"]) == ("BEGIN", None)
        elif event.op == "end":
            assert value["status"] == "END"
            out.append((value["event_count"], _collections(value), data))
            data = []
        elif value.get("transaction") is not None:
            tx = value["transaction"]
            data.append((value["op"], tx["total_order"], tx["data_collection_order"]))
    return out


def walrelay_records(events: list[Event]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        rendering = event.rendering
        assert rendering is not None
        key = None if rendering.key is None else orjson.loads(rendering.key)
        out.append(normalize(key, orjson.loads(event.body)))
    return out


def run_workload(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements((DATA / "stream.sql").read_text()):
            conn.execute(statement)


async def test_debezium_format_matches_real_debezium(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute((DATA / "setup.sql").read_text())
        conn.execute((DATA / "snapshot.sql").read_text())
    sinks = {"dbz": MemorySink(), "tx": MemorySink(), "schemas": MemorySink()}
    sink = sinks["dbz"]
    dest = {
        "name": "dbz",
        "sink": {"type": "file", "path": str(tmp_path / "unused.jsonl")},
        "max_in_flight": 1,
        "format": "debezium",
        "debezium": {"topic.prefix": "golden"},
    }
    with_schemas = dict(
        dest, name="schemas", debezium={"topic.prefix": "golden", "schemas.enable": True}
    )
    cfg = make_config(
        db, TABLES, [dest, dict(dest, name="tx", transaction_metadata=True), with_schemas]
    )
    expected = golden_records()
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    for record in expected:  # the golden run's database was called "golden"
        assert record["value"]["source"]["db"] == "golden"
        record["value"]["source"]["db"] = dbname
    async with running_engine(cfg, sink_factory=lambda d: sinks[d.name]) as engine:
        await wait_for(lambda: len(sink.delivered) >= 3, within=30)
        # Its TRUNCATE waits for the snapshot's table locks: once streaming, and
        # from a thread, never blocking the loop the engine runs on.
        await wait_for(lambda: engine.streaming, what="the snapshot read, streaming")
        await asyncio.to_thread(run_workload, db)
        await wait_for(lambda: any(e.table == "public.zz_end" for e in sink.delivered), within=30)
        await wait_for(lambda: sum(e.op == "end" for e in sinks["tx"].delivered) >= 18, within=30)
    got = walrelay_records(sink.delivered)
    snapshot = [r for r in got if r["value"]["source"]["snapshot"] == "true"]
    rest = [r for r in got if r["value"]["source"]["snapshot"] != "true"]
    exp_snapshot = [r for r in expected if r["value"]["source"]["snapshot"] == "true"]
    exp_rest = [r for r in expected if r["value"]["source"]["snapshot"] != "true"]
    # Snapshot tables are read in parallel: compare those rows as a set.
    key = lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert sorted(map(key, snapshot)) == sorted(map(key, exp_snapshot))
    assert len(rest) == len(exp_rest), [r["value"].get("op") for r in rest]
    for mine, theirs in zip(rest, exp_rest, strict=True):
        assert mine["key"] == theirs["key"]
        assert mine["value"].keys() == theirs["value"].keys()
        for field in theirs["value"]:
            assert mine["value"][field] == theirs["value"][field], (field, theirs)
    # Transaction metadata: the same transactions, counts, collections and orders
    # (walrelay makes BEGIN and END at the commit, after the transaction's events).
    assert walrelay_transactions(sinks["tx"].delivered) == golden_transactions()
    # schemas.enable: the same payloads, wrapped with Debezium's Connect schemas.
    await wait_for(lambda: len(sinks["schemas"].delivered) >= len(sink.delivered), within=30)
    schemas = golden_schemas()
    for plain, wrapped in zip(sink.delivered, sinks["schemas"].delivered, strict=True):
        value = orjson.loads(wrapped.body)
        assert value.keys() == {"schema", "payload"}
        assert normalize(None, value["payload"]) == normalize(None, orjson.loads(plain.body))
        table = value["payload"]["source"]["table"]
        assert schema_diff(as_schema_of_walrelay(value["schema"]), schemas[(table, "value")]) == []
        assert wrapped.rendering is not None and plain.rendering is not None
        if plain.rendering.key is None:
            assert wrapped.rendering.key is None
            continue
        assert wrapped.rendering.key is not None
        key = orjson.loads(wrapped.rendering.key)
        assert key["payload"] == orjson.loads(plain.rendering.key)
        assert key["schema"] == schemas[(table, "key")], table


def golden_schemas() -> dict[tuple[str, str], Any]:
    """(table, "value" | "key") -> the Connect schema real Debezium wrote
    (golden-schemas.jsonl: JsonConverter with schemas.enable=true)."""
    out: dict[tuple[str, str], Any] = {}
    for line in (DATA / "golden-schemas.jsonl").read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec["value"] is None:
            continue
        table = rec["value"]["payload"]["source"]["table"]
        out[(table, "value")] = as_schema_of_walrelay(rec["value"]["schema"])
        if rec["key"] is not None:
            out[(table, "key")] = rec["key"]["schema"]
    return out


def schema_diff(mine: dict[str, Any], theirs: dict[str, Any]) -> list[Any]:
    """What differs, field by field (and column by column in before/after)."""
    out: list[Any] = []
    if {k: v for k, v in mine.items() if k != "fields"} != {
        k: v for k, v in theirs.items() if k != "fields"
    }:
        out.append(("envelope", mine, theirs))
    mine_fields = {f["field"]: f for f in mine["fields"]}
    for part in theirs["fields"]:
        got = mine_fields.get(part["field"])
        if got is None or part.get("type") != "struct" or part["field"] not in ("before", "after"):
            if got != part:
                out.append((part["field"], got, part))
            continue
        columns = {c["field"]: c for c in got["fields"]}
        out += [
            (c["field"], columns.get(c["field"]), c)
            for c in part["fields"]
            if columns.get(c["field"]) != c
        ]
        if [c["field"] for c in got["fields"]] != [c["field"] for c in part["fields"]]:
            out.append(("column order", list(columns), [c["field"] for c in part["fields"]]))
    if [f["field"] for f in mine["fields"]] != [f["field"] for f in theirs["fields"]]:
        out.append(("field order", list(mine_fields), [f["field"] for f in theirs["fields"]]))
    return out


def as_schema_of_walrelay(schema: dict[str, Any]) -> dict[str, Any]:
    """Kept differences (README "format: debezium"): enums are plain strings, a
    domain and an array of a user-defined type are their text."""
    schema = copy.deepcopy(schema)
    for part in schema["fields"]:
        for column in part.get("fields", ()) if part["field"] in ("before", "after") else ():
            if column["field"] == "c_enum":
                column.clear()
                column.update({"type": "string", "optional": True, "field": "c_enum"})
            elif column["field"] in ("c_enum_arr", "c_domain"):
                name = column["field"]
                column.clear()
                column.update({"type": "string", "optional": True, "field": name})
    return schema
