"""Numbers of json/jsonb columns that a double cannot hold reach the consumer
digit for digit, wherever walrelay reads an event body back: ``format:
debezium``, ``format: cloudevents``, a transforms chain (a CEL filter on the
json field, rename, set, cast), the outbox router. PostgreSQL itself judges:
it parses what each destination received and compares it with the row."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from tests.integration.support import execute, running_engine, wait_for
from walrelay.config import Config, parse_config
from walrelay.model import Event
from walrelay.sinks.memory import MemorySink

# A >64-bit integer, a >17-significant-digit decimal, an exponent beyond a
# double (jsonb keeps it as a 401-digit numeric), a number below a double's
# smallest, a decimal's trailing zero; nested in arrays too.
DOC = (
    '{"big": 12345678901234567890123, "neg": -98765432109876543210, '
    '"dec": 0.1000000000000000000000001, "exp": 1e400, "tiny": 1e-400, '
    '"scaled": 1.50, "n": %d, "arr": [18446744073709551616, 2.5]}'
)
RAW = '{"exp": 1e400, "big": 12345678901234567890123, "dec": 0.1000000000000000000000001}'
AMOUNT = "12345678901234567890.123456789012345678901234567890"
PAYLOAD = '{"order": 9, "total": 0.1000000000000000000000001, "id": 12345678901234567890123}'


def insert_rows(dsn: str) -> None:
    execute(
        dsn,
        "insert into docs values (1, %s::jsonb, %s::json, array[%s::jsonb, %s::jsonb], %s)",
        params=(DOC % 7, RAW, '{"big": 12345678901234567890123}', '{"e": 1e400}', AMOUNT),
    )
    execute(
        dsn,
        "insert into docs values (2, %s::jsonb, %s::json, null, 1)",
        params=(DOC % 8, RAW),
    )
    execute(
        dsn,
        "insert into outbox (aggregate_type, aggregate_id, event_type, payload)"
        " values ('order', '9', 'OrderCreated', %s::jsonb)",
        params=(PAYLOAD,),
    )
    message = f'{{"aggregate_type": "order", "aggregate_id": "10", "payload": {PAYLOAD}}}'
    execute(dsn, "select pg_logical_emit_message(true, 'walrelay.outbox', %s)", params=(message,))


def config_of(db: str, tables: list[str], slot: str, destinations: list[dict[str, Any]]) -> Config:
    return parse_config(
        {
            "source": {"dsn": db, "tables": tables, "slot": slot},
            "destinations": destinations,
            "http": {"enabled": False},
            "shutdown_timeout": 10,
        },
        "(test)",
    )


def check(conn: psycopg.Connection[Any], query: str, body: bytes | str, row: int) -> None:
    """``query`` (``%(e)s``: what the destination received) is true for docs row ``row``."""
    text = body.decode() if isinstance(body, bytes) else body
    got = conn.execute(query, {"e": text, "id": row}).fetchone()
    assert got is not None and got[0] is True, (query, text)


def bodies(sink: MemorySink, table: str = "public.docs") -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for e in sink.delivered:
        if e.table == table and e.op in ("insert", "read"):
            out[int(e.keys[0].rsplit("\x1f", 1)[1])] = e.body
    return out


async def test_json_numbers_keep_every_digit_through_formats_transforms_and_outbox(
    db: str,
) -> None:
    execute(
        db,
        "create table docs (id int primary key, doc jsonb, raw json, docs jsonb[], amount numeric)",
        "create table outbox (id bigserial primary key, aggregate_type text, aggregate_id text,"
        " event_type text, payload jsonb)",
    )
    sinks = {name: MemorySink() for name in ("dbz", "ce", "chain", "outbox")}
    destinations: list[dict[str, Any]] = [
        {
            "name": "dbz",
            "sink": {"type": "stdout"},
            "tables": ["public.docs"],
            "format": "debezium",
            "debezium": {"decimal_handling": "string"},
        },
        {
            "name": "ce",
            "sink": {"type": "stdout"},
            "tables": ["public.docs"],
            "format": "cloudevents",
        },
        {
            "name": "chain",
            "sink": {"type": "stdout"},
            "tables": ["public.docs"],
            "transforms": [
                # CEL sees the big numbers as doubles; the values sent stay exact.
                {"filter": "record.doc.n == 7 && record.doc.big > 1.0e22 && record.doc.dec < 0.2"},
                {"rename": {"columns": {"doc": "document"}}},
                {"set": {"fields": {"source_system": "billing"}}},
                {"cast": {"columns": {"amount": "number"}}},
            ],
        },
        {"name": "outbox", "sink": {"type": "stdout"}, "router": {"type": "outbox"}},
    ]
    cfg = config_of(db, ["public.docs", "public.outbox"], "jsonnum", destinations)
    async with running_engine(cfg, sink_factory=lambda dcfg: sinks[dcfg.name]):
        insert_rows(db)
        await wait_for(lambda: len(bodies(sinks["dbz"])) == 2, what="debezium rows")
        await wait_for(lambda: len(bodies(sinks["ce"])) == 2, what="cloudevents rows")
        await wait_for(lambda: len(sinks["outbox"].delivered) >= 4, what="outbox events")
        # Row 2 is filtered out; row 1 is delivered (same transaction order).
        await wait_for(lambda: len(bodies(sinks["chain"])) == 1, what="the chain's row")

    routed: list[Event] = [e for e in sinks["outbox"].delivered if e.route is not None]
    with psycopg.connect(db, autocommit=True) as conn:
        for row, body in bodies(sinks["dbz"]).items():
            # Debezium carries json/jsonb as a string holding the document.
            after = "(%(e)s::jsonb -> 'after')"
            check(
                conn,
                f"select ({after} ->> 'doc')::jsonb = doc from docs where id = %(id)s",
                body,
                row,
            )
            check(
                conn,
                f"select ({after} ->> 'raw')::jsonb = raw::jsonb from docs where id = %(id)s",
                body,
                row,
            )
            check(
                conn,
                f"select ({after} ->> 'amount')::numeric = amount from docs where id = %(id)s",
                body,
                row,
            )
        dbz_docs = bodies(sinks["dbz"])[1]
        check(
            conn,
            "select array(select x::jsonb from jsonb_array_elements_text("
            "%(e)s::jsonb -> 'after' -> 'docs') x) = docs from docs where id = %(id)s",
            dbz_docs,
            1,
        )
        for row, body in bodies(sinks["ce"]).items():
            data = "(%(e)s::jsonb -> 'data' -> 'record')"
            check(conn, f"select {data} -> 'doc' = doc from docs where id = %(id)s", body, row)
            check(
                conn, f"select {data} -> 'raw' = raw::jsonb from docs where id = %(id)s", body, row
            )
            # The json column's text is spliced in as PostgreSQL printed it.
            assert RAW.encode() in body
        check(
            conn,
            "select array(select jsonb_array_elements("
            "%(e)s::jsonb -> 'data' -> 'record' -> 'docs')) = docs from docs where id = %(id)s",
            bodies(sinks["ce"])[1],
            1,
        )
        chained = bodies(sinks["chain"])
        assert list(chained) == [1]
        record = "(%(e)s::jsonb -> 'record')"
        check(
            conn, f"select {record} -> 'document' = doc from docs where id = %(id)s", chained[1], 1
        )
        check(
            conn,
            f"select {record} -> 'raw' = raw::jsonb from docs where id = %(id)s",
            chained[1],
            1,
        )
        check(
            conn,
            f"select jsonb_typeof({record} -> 'amount') = 'number'"
            f" and ({record} -> 'amount')::numeric = amount from docs where id = %(id)s",
            chained[1],
            1,
        )
        check(
            conn,
            f"select {record} ->> 'source_system' = 'billing' from docs where id = %(id)s",
            chained[1],
            1,
        )
        # The outbox router re-encodes the payload: a row's jsonb and a message's text.
        assert [e.route.key for e in routed if e.route is not None] == ["9", "10"]
        for event in routed:
            assert event.route is not None and event.route.value is not None
            same = conn.execute(
                "select %s::jsonb = %s::jsonb", (event.route.value.decode(), PAYLOAD)
            ).fetchone()
            assert same == (True,), event.route.value
            assert b"12345678901234567890123" in event.route.value
            assert b"0.1000000000000000000000001" in event.body


DUPLICATES = '{"a": 1, "a": 2, "n": {"b": [1, {"c": 1, "c": 1.50}]}, "a": "x"}'


async def test_json_keys_given_twice_stay_through_formats_and_transforms(db: str) -> None:
    """A ``json`` column keeps every pair of a key given more than once; so must
    every destination that reads the body back (PostgreSQL judges: the pairs,
    in order, whitespace aside)."""
    execute(db, "create table notes (id int primary key, raw json)")
    sinks = {name: MemorySink() for name in ("dbz", "chain")}
    destinations: list[dict[str, Any]] = [
        {"name": "dbz", "sink": {"type": "stdout"}, "format": "debezium"},
        {
            "name": "chain",
            "sink": {"type": "stdout"},
            "transforms": [
                {"filter": "record.raw.a == 'x'"},  # CEL sees the last value, as ::jsonb
                {"rename": {"columns": {"raw": "document"}}},
            ],
        },
    ]
    cfg = config_of(db, ["public.notes"], "jsondup", destinations)
    async with running_engine(cfg, sink_factory=lambda dcfg: sinks[dcfg.name]):
        execute(db, "insert into notes values (1, %s::json)", params=(DUPLICATES,))
        for sink in sinks.values():

            def arrived(sink: MemorySink = sink) -> bool:
                return len(bodies(sink, "public.notes")) == 1

            await wait_for(arrived, what="the row")

    same = (
        "select regexp_replace(%(e)s, '\\s', '', 'g') = regexp_replace(raw::text, '\\s', '', 'g')"
        " from notes where id = %(id)s"
    )
    with psycopg.connect(db, autocommit=True) as conn:
        dbz = orjson.loads(bodies(sinks["dbz"], "public.notes")[1])
        check(conn, same, dbz["after"]["raw"], 1)
        chained = bodies(sinks["chain"], "public.notes")[1]
        document = chained[chained.index(b'"document":') + len(b'"document":') :]
        check(conn, same, document[: document.index(b',"a":"x"}') + len(b',"a":"x"}')], 1)
