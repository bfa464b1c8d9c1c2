"""Relay records -> events (walrelay.worker.records)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from walrelay.model import Begin, Change, Column, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.sinks.kafka import message_key
from walrelay.source.types import TypeRegistry
from walrelay.worker.records import NotAnEnvelope, event_from_record

REL = Relation(
    16384,
    "public",
    "acct",
    "d",
    (Column("id", 23, -1, True), Column("v", 23, -1, False)),
)
BEGIN = Begin(xid=77, commit_lsn=0x16B3748, committed_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))


def relay_record(change: Change, seq: int = 2) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """What the relay's kafka sink writes for the change."""
    event = EnvelopeBuilder(TypeRegistry()).build(BEGIN, change, seq)
    headers = [("id", event.id.encode()), ("op", event.op.encode()), ("table", b"public.acct")]
    return event.body, message_key(event, "public.acct"), headers


def test_a_row_event_comes_back_whole() -> None:
    value, key, headers = relay_record(Change("update", REL, new=(b"7", b"3")))
    event = event_from_record(value, key, headers)
    assert event.id == "00000000016B3748/0000000002"
    assert (event.op, event.table, event.xid) == ("update", "public.acct", 77)
    assert event.committed_at == BEGIN.committed_at
    assert event.body == value  # byte for byte: every sink gets the relay's envelope
    assert event.keys == ('public.acct\x1f{"id":7}',)
    assert orjson.loads(event.key_json or b"") == {"id": 7}
    assert event.envelope()["record"] == {"id": 7, "v": 3}


def test_same_key_same_grouping_key() -> None:
    a = event_from_record(*relay_record(Change("insert", REL, new=(b"7", b"1")), seq=0))
    b = event_from_record(*relay_record(Change("delete", REL, old=(b"7", None)), seq=1))
    c = event_from_record(*relay_record(Change("insert", REL, new=(b"8", b"1")), seq=3))
    assert a.keys == b.keys != c.keys


def test_truncate_is_a_barrier() -> None:
    value, key, headers = relay_record(Change("truncate", relations=(REL,)))
    assert event_from_record(value, key, headers).keys == ()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"payload": 1}', "no walrelay event id"),
        (b'{"id": "zz", "op": "insert"}', "not an event id"),
    ],
)
def test_other_records_are_refused_with_the_reason(value: bytes | None, why: str) -> None:
    with pytest.raises(NotAnEnvelope, match=why):
        event_from_record(value, b"k", [])


def test_a_json_key_keeps_every_digit() -> None:
    rel = Relation(16385, "public", "docs", "d", (Column("doc", 3802, -1, True),))
    doc = b'{"big": 12345678901234567890123, "dec": 0.1000000000000000000000001}'
    event = EnvelopeBuilder(TypeRegistry()).build(BEGIN, Change("insert", rel, new=(doc,)), 0)
    key = message_key(event, "public.docs")
    assert key == b'{"doc":{"big":12345678901234567890123,"dec":0.1000000000000000000000001}}'
    headers = [("id", event.id.encode()), ("op", b"insert"), ("table", b"public.docs")]
    back = event_from_record(event.body, key, headers)
    assert back.key_json == key
