"""The outbox event router, publish()'s SQL and the outbox DDL, without a server."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest

from tests.factories import make_event
from walrelay.config import OutboxRouterConfig
from walrelay.errors import ConfigError
from walrelay.model import Event, Op, format_event_id, format_lsn
from walrelay.outbox import OutboxRouter, OutboxTable, init_statements
from walrelay.outbox.publish import _insert, _message
from walrelay.pipeline.envelope import KEY_SEPARATOR, encode_json

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LSN = 0x16B3748


def row_event(record: dict[str, Any] | None, *, op: Op = "insert", seq: int = 0) -> Event:
    env = {
        "id": format_event_id(LSN, seq),
        "op": op,
        "table": "public.outbox",
        "key": None if record is None else {"id": record.get("id")},
        "record": record if op != "delete" else None,
        "old": None,
        "commit_lsn": format_lsn(LSN),
        "xid": 7,
        "committed_at": AT.isoformat(),
    }
    return make_event(
        LSN,
        seq,
        op=op,
        table="public.outbox",
        keys=("public.outbox\x1f1",),
        body=encode_json(env),
        xid=7,
        committed_at=AT,
    )


def message_event(content: str, prefix: str = "walrelay.outbox", seq: int = 0) -> Event:
    env = {
        "id": format_event_id(LSN, seq),
        "op": "message",
        "table": None,
        "key": None,
        "record": None,
        "old": None,
        "commit_lsn": format_lsn(LSN),
        "xid": 7,
        "committed_at": AT.isoformat(),
        "prefix": prefix,
        "content": content,
        "content_encoding": "utf-8",
    }
    return make_event(
        LSN,
        seq,
        op="message",
        table="",
        keys=("message\x1f" + prefix,),
        body=encode_json(env),
        xid=7,
        committed_at=AT,
    )


ORDER = {
    "id": 17,
    "aggregate_type": "order",
    "aggregate_id": "42",
    "event_type": "OrderCreated",
    "payload": {"total": "9.90", "items": [1, 2]},
    "created_at": "2026-01-02T03:04:05+00:00",
}


def router(**options: Any) -> OutboxRouter:
    return OutboxRouter(OutboxRouterConfig(type="outbox", **options), destination="d")


def test_row_is_routed_by_aggregate_type_with_key_payload_and_headers() -> None:
    out = router().route(row_event(ORDER))
    assert out is not None and out.route is not None
    assert out.route.topic == "order.events"
    assert out.route.key == "42"
    assert out.route.value is not None
    assert orjson.loads(out.route.value) == {"total": "9.90", "items": [1, 2]}
    assert dict(out.route.headers) == {
        "outbox_id": "17",
        "event_type": "OrderCreated",
        "aggregate_type": "order",
    }
    # per-aggregate order: the grouping key is the routed topic + aggregate id
    assert out.keys == ("outbox" + KEY_SEPARATOR + "order.events" + KEY_SEPARATOR + "42",)
    assert (out.commit_lsn, out.seq, out.id) == (LSN, 0, format_event_id(LSN, 0))
    body = orjson.loads(out.body)
    assert body["id"] == out.id
    assert body["topic"] == "order.events" and body["key"] == "42"
    assert body["payload"] == {"total": "9.90", "items": [1, 2]}  # JSON, not a string
    assert body["headers"]["event_type"] == "OrderCreated"
    assert body["tombstone"] is False
    assert body["table"] == "public.outbox" and body["op"] == "insert"
    assert out.size > len(out.body)


def test_table_less_message_routes_the_same_way() -> None:
    content = orjson.dumps({k: v for k, v in ORDER.items() if k not in ("id", "created_at")})
    out = router().route(message_event(content.decode()))
    row = router().route(row_event(ORDER))
    assert out is not None and out.route is not None and row is not None and row.route
    assert (out.route.topic, out.route.key, out.route.value) == (
        row.route.topic,
        row.route.key,
        row.route.value,
    )
    assert out.keys == row.keys
    assert "outbox_id" not in dict(out.route.headers)  # no row, no id
    assert orjson.loads(out.body)["op"] == "message"


def test_other_tables_and_prefixes_pass_unchanged() -> None:
    r = router()
    other = row_event(ORDER)
    other.table = "public.orders"
    assert r.route(other) is other
    msg = message_event('{"aggregate_id": 1}', prefix="audit")
    assert r.route(msg) is msg


def test_updates_and_deletes_of_outbox_rows_are_skipped_or_delivered() -> None:
    upd = row_event(ORDER, op="update")
    dele = row_event(ORDER, op="delete")
    r = router()
    assert r.route(upd) is None and r.route(dele) is None and r.skipped == 2
    d = router(other_ops="deliver")
    assert d.route(upd) is upd and d.route(dele) is dele


def test_tombstone_on_empty_payload() -> None:
    empty = dict(ORDER, payload=None)
    out = router(tombstone_on_empty=True).route(row_event(empty))
    assert out is not None and out.route is not None
    assert out.route.value is None and orjson.loads(out.body)["tombstone"] is True
    plain = router().route(row_event(empty))
    assert plain is not None and plain.route is not None and plain.route.value == b"null"


def test_topic_template_regex_and_cleaning() -> None:
    out = router(topic="{aggregate_type}.{event_type}").route(row_event(ORDER))
    assert out is not None and out.route is not None
    assert out.route.topic == "order.OrderCreated"
    weird = dict(ORDER, aggregate_type="sales order/β")
    out = router().route(row_event(weird))
    assert out is not None and out.route is not None
    assert out.route.topic == "sales_order__.events"
    rx = router(topic_regex=r"(?P<kind>order|invoice)", topic_replacement=r"outbox.event.\g<kind>")
    out = rx.route(row_event(ORDER))
    assert out is not None and out.route is not None and out.route.topic == "outbox.event.order"
    out = rx.route(row_event(dict(ORDER, aggregate_type="customer")))
    assert out is not None and out.route is not None and out.route.topic == "customer.events"


def test_envelope_fields_and_header_list() -> None:
    out = router(envelope_fields=["event_type"], headers=["id"]).route(row_event(ORDER))
    assert out is not None and out.route is not None and out.route.value is not None
    assert orjson.loads(out.route.value) == {
        "payload": {"total": "9.90", "items": [1, 2]},
        "event_type": "OrderCreated",
    }
    assert out.route.headers == (("id", "17"),)


def test_unroutable_message_passes_unrouted() -> None:
    r = router()
    for content in ("not json", "[1, 2]", '{"aggregate_type": "order"}'):
        msg = message_event(content)
        assert r.route(msg) is msg


def test_bad_templates_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        router(topic="{aggregate_type!r}.x")
    with pytest.raises(ConfigError):
        router(topic="{unclosed")
    with pytest.raises(ValueError):
        OutboxRouterConfig(type="outbox", topic_regex="(")
    with pytest.raises(ValueError):
        OutboxRouterConfig(type="outbox", topic_regex="x")


def test_publish_sql_quotes_names_and_encodes_payload() -> None:
    query, params = _insert("order", 42, "OrderCreated", {"a": 1}, 'app."outbox%', {"tenant": 3})
    assert query == (
        'INSERT INTO "app"."""outbox%%" ("aggregate_type", "aggregate_id", "event_type", '
        '"payload", "tenant") VALUES (%s, %s, %s, %s::jsonb, %s)'
    )
    assert params == ("order", "42", "OrderCreated", '{"a":1}', 3)
    query, params = _insert("order", "1", "E", None, "outbox", None)
    assert query.startswith('INSERT INTO "public"."outbox"') and params[3] is None
    with pytest.raises(ValueError):
        _insert("order", "1", "E", None, "outbox", {"payload": 1})
    query, params = _message("order", 42, "E", [1], "walrelay.outbox", None)
    assert query == "SELECT pg_logical_emit_message(true, %s, %s)"
    assert params[0] == "walrelay.outbox"
    assert orjson.loads(params[1]) == {
        "aggregate_type": "order",
        "aggregate_id": "42",
        "event_type": "E",
        "payload": [1],
    }


def test_outbox_ddl() -> None:
    t = OutboxTable.parse("app.events")
    assert t.qualified == "app.events" and t.partition_name(date(2026, 3, 1)) == "events_p20260301"
    assert OutboxTable.parse("outbox") == OutboxTable("public", "outbox")
    with pytest.raises(ConfigError):
        OutboxTable("public", "x" * 60)
    texts = [
        s.as_string(None) for s in init_statements(t, "pub", days_ahead=1, today=date(2026, 2, 28))
    ]
    assert texts[0] == 'CREATE SCHEMA IF NOT EXISTS "app"'
    assert "PARTITION BY RANGE (created_at)" in texts[1]
    assert texts[2] == 'ALTER TABLE "app"."events" REPLICA IDENTITY DEFAULT'
    assert texts[3] == (
        'CREATE TABLE IF NOT EXISTS "app"."events_p20260228" PARTITION OF "app"."events" '
        "FOR VALUES FROM ('2026-02-28 00:00:00+00') TO ('2026-03-01 00:00:00+00')"
    )
    assert "events_p20260301" in texts[4]
    assert texts[5] == (
        'CREATE PUBLICATION "pub" FOR TABLE "app"."events" WITH (publish_via_partition_root = true)'
    )


BIG_PAYLOAD = (
    '{"total": 0.1000000000000000000000001, "id": 12345678901234567890123, '
    '"exp": 1' + "0" * 400 + ', "scaled": 1.50}'
)


def test_payload_numbers_keep_every_digit_from_a_row_and_a_message() -> None:
    # A jsonb payload column, spliced into the envelope as PostgreSQL printed it.
    row = router().route(row_event({**ORDER, "payload": orjson.Fragment(BIG_PAYLOAD)}))
    content = '{"aggregate_type": "order", "aggregate_id": "42", "payload": ' + BIG_PAYLOAD + "}"
    message = router().route(message_event(content))
    compact = BIG_PAYLOAD.replace(": ", ":").replace(", ", ",").encode()
    for out in (row, message):
        assert out is not None and out.route is not None
        assert out.route.value == compact
        assert b'"payload":' + compact in out.body
