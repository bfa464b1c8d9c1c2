"""format: cloudevents (read back by the official SDK) and what sinks make of a
rendered event: ce- headers, record keys by key_format, tombstone keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from walrelay.format_config import CloudEventsOptions, DebeziumOptions
from walrelay.model import Begin, Change, Column, Event, Relation, Rendering
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.formats import SNAPSHOT_NONE, CloudEventsFormatter, DebeziumFormatter
from walrelay.sinks.kafka import message_key
from walrelay.sinks.rendered import RecordKeys, http_headers, kafka_headers
from walrelay.source.types import TypeRegistry
from walrelay.state.parking import rendering_from_json, rendering_to_json, route_from_json

BEGIN = Begin(xid=9, commit_lsn=0x2000, committed_at=datetime(2024, 5, 6, 7, 8, 9, 5, tzinfo=UTC))
REL = Relation(
    1,
    "public",
    "users",
    "d",
    (Column("id", 23, -1, True), Column("email", 25, -1, False), Column("v", 25, -1, False)),
)


def build(change: Change, seq: int = 0) -> tuple[EnvelopeBuilder, Event]:
    builder = EnvelopeBuilder(TypeRegistry())
    return builder, builder.build(BEGIN, change, seq)


INSERT = Change(op="insert", relation=REL, new=(b"7", b"a@x.org", b'q u"o%te'))


def test_structured_mode_is_one_document_the_sdk_reads() -> None:
    _, event = build(INSERT, 3)
    out = CloudEventsFormatter(CloudEventsOptions(), slot="main").render(event, SNAPSHOT_NONE)
    assert out.rendering is not None
    assert out.rendering.content_type == "application/cloudevents+json"
    assert out.rendering.attributes == ()
    headers = http_headers(out)
    assert headers == {"Content-Type": "application/cloudevents+json"}
    parsed = ce_http.from_http(ce_http.HTTPMessage(headers, out.body), JSONFormat())
    assert parsed.get_id() == "0000000000002000/0000000003"
    assert parsed.get_source() == "/walrelay/main"
    assert parsed.get_type() == "walrelay.public.users.insert"
    assert parsed.get_subject() == '{"id":7}'
    assert parsed.get_time() == BEGIN.committed_at
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_data() == orjson.loads(event.body)


def test_binary_mode_headers_the_sdk_reads_over_http_and_kafka() -> None:
    _, event = build(INSERT, 3)
    options = CloudEventsOptions(mode="binary", type="com.example.{table}.{op}", source="/db")
    out = CloudEventsFormatter(options, slot="main").render(event, SNAPSHOT_NONE)
    assert out.body is event.body  # the data is the envelope itself
    headers = http_headers(out)
    assert headers["ce-subject"] == "{%22id%22:7}"  # percent-encoded per the HTTP binding
    assert headers["Content-Type"] == "application/json"
    http_event = ce_http.from_http(ce_http.HTTPMessage(headers, out.body), JSONFormat())
    kafka_event = ce_kafka.from_kafka(
        ce_kafka.KafkaMessage(headers=dict(kafka_headers(out)), key=None, value=out.body),
        JSONFormat(),
    )
    for parsed in (http_event, kafka_event):
        assert parsed.get_id() == "0000000000002000/0000000003"
        assert parsed.get_source() == "/db"
        assert parsed.get_type() == "com.example.users.insert"
        assert parsed.get_subject() == '{"id":7}'
        assert parsed.get_time() == BEGIN.committed_at
        assert parsed.get_data() == orjson.loads(event.body)


def test_message_and_truncate_attributes() -> None:
    _, message = build(Change(op="message", prefix="audit", content=b"x"))
    attrs = CloudEventsFormatter(CloudEventsOptions(), slot="s").attributes(message)
    assert (attrs["type"], attrs["subject"]) == ("walrelay.message", "audit")
    _, truncate = build(Change(op="truncate", relations=(REL,)))
    formatter = CloudEventsFormatter(CloudEventsOptions(), slot="s")
    attrs = formatter.attributes(truncate)
    assert attrs["type"] == "walrelay.public.users.truncate"
    assert "subject" not in attrs
    out = formatter.render(truncate, SNAPSHOT_NONE)
    assert out.rendering is not None and out.rendering.tables == ("public.users",)


def keys(key_format: str, event: Event) -> tuple[bytes | None, bytes | None]:
    record_keys = RecordKeys(key_format, message_key)
    return record_keys.key(event, "public.users"), record_keys.old_key(event)


KEY_CHANGE = Change(
    op="update", relation=REL, new=(b"8", b"b@x.org", b"v"), old=(b"7", None, None), old_kind="K"
)


@pytest.mark.parametrize(
    ("key_format", "change", "expected"),
    [
        ("walrelay", INSERT, (b'{"id":7}', None)),
        ("debezium", INSERT, (b'{"id":7}', None)),
        ("column:email", INSERT, (b"a@x.org", None)),
        ("column:id", INSERT, (b"7", None)),
        ("walrelay", KEY_CHANGE, (b'{"id":8}', b'{"id":7}')),
        ("debezium", KEY_CHANGE, (b'{"id":8}', b'{"id":7}')),
        ("column:id", KEY_CHANGE, (b"8", b"7")),
        ("debezium", Change(op="truncate", relations=(REL,)), (None, None)),
        ("walrelay", Change(op="truncate", relations=(REL,)), (b'{"table":"public.users"}', None)),
    ],
)
def test_record_keys_of_walrelay_envelopes(
    key_format: str, change: Change, expected: tuple[Any, Any]
) -> None:
    _, event = build(change)
    assert keys(key_format, event) == expected


def test_record_keys_of_debezium_events() -> None:
    builder, event = build(KEY_CHANGE)
    formatter = DebeziumFormatter(
        DebeziumOptions(), name="n", db="d", version="v", relation=builder.relation
    )
    out = formatter.render(event, SNAPSHOT_NONE)
    assert keys("debezium", out) == (b'{"id":8}', b'{"id":7}')
    assert keys("walrelay", out) == (b'{"id":8}', b'{"id":7}')
    message = formatter.render(build(Change(op="message", prefix="p", content=b""))[1], "false")
    assert keys("debezium", message) == (b'{"prefix":"p"}', None)


@pytest.mark.parametrize(
    "rendering",
    [
        Rendering(key=b'{"id":8}', old_key=b'{"id":7}', tables=("public.a", "public.b")),
        Rendering(
            key=None,
            attributes=(("id", "1/2"), ("subject", '{"k":"a\x00"}')),
            content_type="application/json",
        ),
    ],
)
def test_a_parked_event_keeps_its_rendering(rendering: Rendering) -> None:
    # Parking stores the event's body and, in its route column, the rendering:
    # a re-delivery sends the same record key and CloudEvents headers.
    stored = orjson.dumps({"rendering": rendering_to_json(rendering)}).decode()
    assert "\\u0000" not in stored  # jsonb cannot hold NUL
    assert rendering_from_json(orjson.loads(stored)) == rendering
    assert route_from_json(orjson.loads(stored)) is None


def test_a_type_template_with_an_unknown_field_is_a_config_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"\{schema\}, \{table\} and \{op\}"):
        CloudEventsOptions(type="walrelay.{tabel}")


BIG_JSONB = (
    '{"big": 12345678901234567890123, "dec": 0.1000000000000000000000001, '
    '"exp": 1' + "0" * 400 + ', "scaled": 1.50}'
)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_json_numbers_reach_the_data_digit_for_digit(mode: str) -> None:
    rel = Relation(
        1, "public", "docs", "d", (Column("id", 23, -1, True), Column("doc", 3802, -1, False))
    )
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(
        BEGIN, Change(op="insert", relation=rel, new=(b"1", BIG_JSONB.encode())), 0
    )
    out = CloudEventsFormatter(CloudEventsOptions(mode=mode), slot="main").render(
        event, SNAPSHOT_NONE
    )
    # The envelope is spliced in as it is: the jsonb text PostgreSQL printed.
    assert BIG_JSONB.encode() in out.body
    data = json.loads(out.body, parse_float=Decimal)
    if mode == "structured":
        data = data["data"]
    doc = data["record"]["doc"]
    assert doc["big"] == 12345678901234567890123
    assert doc["dec"] == Decimal("0.1000000000000000000000001")
    assert doc["exp"] == 10**400
    assert str(doc["scaled"]) == "1.50"
