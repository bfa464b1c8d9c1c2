"""The Kafka record key comes from Event.key_json; the body is not parsed for it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from walrelay import exact_json
from walrelay.model import Begin, Change, Column, Event, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.sinks.kafka import _CANONICAL_KEY, message_key
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


def _slow_key(key_json: bytes) -> bytes:
    """The record key by parsing and writing again: what the fast path must equal."""
    return exact_json.dumps(exact_json.loads(key_json), option=orjson.OPT_SORT_KEYS)


def test_plain_one_column_keys_are_used_as_they_are() -> None:
    fast = [
        b'{"id":7}',
        b'{"id":0}',
        b'{"id":-42}',
        b'{"id":922337203685477580}',  # 18 digits: an int64
        b'{"order_id":"a-b c/d:e"}',
        b'{"k":""}',
    ]
    for key_json in fast:
        assert _CANONICAL_KEY.fullmatch(key_json), key_json
        event = Event(1, 0, "insert", "public.t", ("k",), b"not json", 1, T0, key_json=key_json)
        assert message_key(event, "public.t") == key_json == _slow_key(key_json)


def test_keys_that_could_be_written_differently_take_the_slow_path() -> None:
    slow = [
        b'{"b":1,"a":2}',  # two members: sorted
        b'{"id":-0}',
        b'{"id":007}',
        b'{"id":1.50}',
        b'{"id":1e400}',
        b'{"id":99999999999999999999}',  # beyond int64
        b'{"id":"caf\\u00e9"}',  # an escape orjson writes as UTF-8
        b'{"id":"x\xc3\xa9"}',
        b'{"id": 1}',
        b'{"id":true}',
        b'{"id":null}',
    ]
    for key_json in slow:
        assert not _CANONICAL_KEY.fullmatch(key_json), key_json
    for key_json in (b'{"b":1,"a":2}', b'{"id":"caf\\u00e9"}', b'{"id": 1}'):
        event = Event(1, 0, "insert", "public.t", ("k",), b"not json", 1, T0, key_json=key_json)
        assert message_key(event, "public.t") == _slow_key(key_json) != key_json
