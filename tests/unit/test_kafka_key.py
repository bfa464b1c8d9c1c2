"""The Kafka record key comes from Event.key_json; the body is not parsed for it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from walrelay.model import Begin, Change, Column, Event, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.sinks.kafka import message_key
from walrelay.source.types import TypeRegistry

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TEXT, INT4 = 25, 23


def test_key_is_canonical_json_of_the_envelope_key() -> None:
    # Key columns in table order (b, a); the record key sorts them, as before.
    pairs = Relation(
        1, "public", "pairs", "d", (Column("b", TEXT, -1, True), Column("a", INT4, -1, True))
    )
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(Begin(1, 0x10, T0), Change("insert", pairs, new=(b"x\xc3\xa9", b"7")), 0)
    assert event.key_json == b'{"b":"x\xc3\xa9","a":7}'
    key = message_key(event, "public.pairs")
    assert key == b'{"a":7,"b":"x\xc3\xa9"}'
    # What the key was when it was read from the body.
    assert key == orjson.dumps(orjson.loads(event.body)["key"], option=orjson.OPT_SORT_KEYS)


def test_key_json_is_used_instead_of_the_body() -> None:
    event = Event(1, 0, "insert", "public.t", ("k",), b"not json", 1, T0, key_json=b'{"id":7}')
    assert message_key(event, "public.t") == b'{"id":7}'
    keyless = Event(1, 0, "insert", "public.t", ("k",), b"not json", 1, T0, key_json=b"null")
    assert message_key(keyless, "public.t") == b'{"table":"public.t"}'


def test_events_without_key_json_read_the_body() -> None:
    body = orjson.dumps({"key": {"z": 1, "a": {"y": 2, "b": 3}}})
    event = Event(1, 0, "update", "public.t", ("k",), body, 1, T0)
    assert message_key(event, "public.t") == b'{"a":{"b":3,"y":2},"z":1}'
