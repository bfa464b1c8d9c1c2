"""EnvelopeBuilder: the JSON envelope, grouping keys and value encoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from walrelay.errors import ConfigError, DecodeError
from walrelay.model import (
    EVENT_OVERHEAD_BYTES,
    UNCHANGED_TOAST,
    Begin,
    Change,
    Column,
    RawTuple,
    Relation,
    parse_event_id,
)
from walrelay.pipeline.envelope import EnvelopeBuilder, encode_json
from walrelay.source.types import TypeRegistry

INT4, INT8, TEXT, NUMERIC, FLOAT8, TSTZ, JSONB, BYTEA, UUID_, INTERVAL, TIMETZ, DATE = (
    23,
    20,
    25,
    1700,
    701,
    1184,
    3802,
    17,
    2950,
    1186,
    1266,
    1082,
)
FLOAT8_ARRAY, INT4_ARRAY = 1022, 1007

COMMIT_LSN = 0x16B3748
BEGIN = Begin(
    xid=735, commit_lsn=COMMIT_LSN, committed_at=datetime(2024, 1, 2, 3, 4, 5, 123456, UTC)
)


def rel(
    *cols: tuple[str, int, bool],
    name: str = "users",
    identity: str = "d",
    oid: int = 16384,
) -> Relation:
    return Relation(
        oid=oid,
        schema="public",
        name=name,
        replica_identity=identity,
        columns=tuple(Column(n, t, -1, k) for n, t, k in cols),
    )


USERS = rel(
    ("id", INT4, True),
    ("name", TEXT, False),
    ("balance", NUMERIC, False),
    ("created", TSTZ, False),
    ("profile", JSONB, False),
)


def build(change: Change, seq: int = 0, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    builder = EnvelopeBuilder(TypeRegistry(), **kwargs)
    event = builder.build(BEGIN, change, seq)
    body = json.loads(event.body, parse_float=Decimal)  # every digit, as emitted
    return event, body


def users_row(id_: bytes = b"7", name: bytes | None = b"Ann") -> RawTuple:
    return (
        id_,
        name,
        b"12345678901234567890.123456789",
        b"2024-01-02 03:04:05.5+00",
        b'{"tags": ["a", "b"], "n": 1}',
    )


def test_insert_envelope() -> None:
    event, body = build(Change(op="insert", relation=USERS, new=users_row()), seq=3)
    assert body == {
        "id": "00000000016B3748/0000000003",
        "op": "insert",
        "table": "public.users",
        "key": {"id": 7},
        "record": {
            "id": 7,
            "name": "Ann",
            "balance": "12345678901234567890.123456789",
            "created": "2024-01-02T03:04:05.500000+00:00",
            "profile": {"tags": ["a", "b"], "n": 1},
        },
        "old": None,
        "commit_lsn": "0/16B3748",
        "xid": 735,
        "committed_at": "2024-01-02T03:04:05.123456+00:00",
    }
    assert event.id == "00000000016B3748/0000000003"
    assert parse_event_id(event.id) == (COMMIT_LSN, 3)
    assert (event.commit_lsn, event.seq, event.op, event.xid) == (COMMIT_LSN, 3, "insert", 735)
    assert event.table == "public.users"
    assert event.keys == ("public.users\x1f7",)
    assert event.committed_at == BEGIN.committed_at
    assert event.size == len(event.body) + EVENT_OVERHEAD_BYTES
    # envelope() decodes the body for sinks that need its fields
    env = event.envelope()
    assert datetime.fromisoformat(env["record"]["created"]) == datetime(
        2024, 1, 2, 3, 4, 5, 500000, UTC
    )
    assert env["record"]["balance"] == "12345678901234567890.123456789"
    assert "unchanged" not in body


def test_update_without_key_change_has_one_key() -> None:
    event, body = build(Change(op="update", relation=USERS, new=users_row(name=b"Bob")))
    assert body["op"] == "update"
    assert body["record"]["name"] == "Bob"
    assert body["old"] is None
    assert body["key"] == {"id": 7}
    assert event.keys == ("public.users\x1f7",)


def test_update_with_key_change_k_tuple_gives_two_keys() -> None:
    old: RawTuple = (b"7", None, None, None, None)  # 'K': key columns only
    change = Change(op="update", relation=USERS, new=users_row(id_=b"8"), old=old, old_kind="K")
    event, body = build(change)
    assert body["key"] == {"id": 8}
    assert body["old"] == {"id": 7}  # only the replica identity columns, not nulls
    assert body["record"]["id"] == 8
    assert event.keys == ("public.users\x1f8", "public.users\x1f7")


def test_update_with_o_tuple_same_key() -> None:
    full = rel(("id", INT4, True), ("name", TEXT, True), name="t", identity="f")
    change = Change(
        op="update",
        relation=full,
        new=(b"1", b"new"),
        old=(b"1", b"old"),
        old_kind="O",
    )
    event, body = build(change, key_columns={"public.t": ["id"]})
    assert body["old"] == {"id": 1, "name": "old"}
    assert body["record"] == {"id": 1, "name": "new"}
    assert body["key"] == {"id": 1}
    assert event.keys == ("public.t\x1f1",)


def test_replica_identity_full_without_override_keys_on_whole_row() -> None:
    full = rel(("id", INT4, True), ("name", TEXT, True), name="t", identity="f")
    change = Change(
        op="update", relation=full, new=(b"1", b"new"), old=(b"1", b"old"), old_kind="O"
    )
    event, body = build(change)
    assert body["key"] == {"id": 1, "name": "new"}
    assert event.keys == ("public.t\x1f1\x1fnew", "public.t\x1f1\x1fold")


def test_replica_identity_full_delete_with_override() -> None:
    full = rel(("id", INT4, True), ("name", TEXT, True), ("n", INT8, True), name="t", identity="f")
    change = Change(op="delete", relation=full, old=(b"5", b"x", b"9"), old_kind="O")
    event, body = build(change, key_columns={"public.t": ("id",)})
    assert body["op"] == "delete"
    assert body["record"] is None
    assert body["old"] == {"id": 5, "name": "x", "n": 9}
    assert body["key"] == {"id": 5}
    assert event.keys == ("public.t\x1f5",)


def test_delete_with_k_tuple() -> None:
    change = Change(op="delete", relation=USERS, old=(b"7", None, None, None, None), old_kind="K")
    event, body = build(change, seq=9)
    assert body["id"] == "00000000016B3748/0000000009"
    assert body["record"] is None
    assert body["old"] == {"id": 7}
    assert body["key"] == {"id": 7}
    assert event.keys == ("public.users\x1f7",)


def test_composite_key_and_separator_escaping() -> None:
    t = rel(("a", TEXT, True), ("b", TEXT, True), ("v", INT4, False), name="pairs")
    e1, body = build(Change(op="insert", relation=t, new=(b"x\x1fy", b"z", b"1")))
    e2, _ = build(Change(op="insert", relation=t, new=(b"x", b"y\x1fz", b"1")))
    assert body["key"] == {"a": "x\x1fy", "b": "z"}
    assert e1.keys == ("public.pairs\x1fx\x00Ey\x1fz",)
    assert e1.keys != e2.keys
    e3, _ = build(Change(op="insert", relation=t, new=(b"", None, b"1")))
    assert e3.keys == ("public.pairs\x1f\x1f\x00",)


def test_table_without_key_is_serialised() -> None:
    t = rel(("v", INT4, False), name="log", identity="n")
    event, body = build(Change(op="insert", relation=t, new=(b"1",)))
    assert body["key"] is None
    assert event.keys == ("public.log",)
    event, body = build(Change(op="delete", relation=t))
    assert body["old"] is None
    assert event.keys == ("public.log",)


def test_unchanged_toast_is_left_out_not_null() -> None:
    t = rel(("id", INT4, True), ("big", TEXT, False), ("doc", JSONB, False), ("n", INT4, False))
    change = Change(op="update", relation=t, new=(b"3", UNCHANGED_TOAST, UNCHANGED_TOAST, None))
    event, body = build(change)
    assert body["record"] == {"id": 3, "n": None}
    assert body["unchanged"] == ["big", "doc"]
    assert event.envelope()["unchanged"] == ["big", "doc"]
    assert event.keys == ("public.users\x1f3",)


def test_unchanged_toast_key_value_comes_from_old_row() -> None:
    t = rel(("k", TEXT, True), ("v", TEXT, True), name="t", identity="f")
    change = Change(
        op="update",
        relation=t,
        new=(UNCHANGED_TOAST, b"new"),
        old=(b"long key", b"old"),
        old_kind="O",
    )
    event, body = build(change, key_columns={"public.t": ["k"]})
    assert body["record"] == {"v": "new"}
    assert body["unchanged"] == ["k"]
    assert body["key"] == {"k": "long key"}
    assert event.keys == ("public.t\x1flong key",)


def test_override_outside_replica_identity() -> None:
    outbox = rel(
        ("id", UUID_, True),
        ("aggregate_id", TEXT, False),
        ("payload", JSONB, False),
        name="outbox",
    )
    cols = {"public.outbox": ["aggregate_id"]}
    new = (b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"order-1", b'{"total": 5}')
    event, body = build(Change(op="insert", relation=outbox, new=new), key_columns=cols)
    assert body["key"] == {"aggregate_id": "order-1"}
    assert body["record"]["id"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert body["record"]["payload"] == {"total": 5}
    assert event.keys == ("public.outbox\x1forder-1",)
    # an UPDATE with a 'K' tuple cannot tell the old aggregate_id: no spurious second key
    old = (b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None, None)
    change = Change(op="update", relation=outbox, new=new, old=old, old_kind="K")
    event, _ = build(change, key_columns=cols)
    assert event.keys == ("public.outbox\x1forder-1",)
    # a DELETE with a 'K' tuple: the key value was not sent
    event, body = build(
        Change(op="delete", relation=outbox, old=old, old_kind="K"), key_columns=cols
    )
    assert event.keys == ("public.outbox\x1f\x00?",)
    assert body["key"] == {}


def test_unknown_override_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nope"):
        build(
            Change(op="insert", relation=USERS, new=users_row()),
            key_columns={"public.users": ["nope"]},
        )


def test_set_key_columns_replans() -> None:
    builder = EnvelopeBuilder(TypeRegistry())
    t = rel(("id", INT4, True), ("name", TEXT, True), name="t", identity="f")
    change = Change(op="insert", relation=t, new=(b"1", b"a"))
    assert builder.build(BEGIN, change, 0).keys == ("public.t\x1f1\x1fa",)
    builder.set_key_columns("public.t", ["id"])
    assert builder.build(BEGIN, change, 1).keys == ("public.t\x1f1",)


def test_new_relation_object_replans() -> None:
    builder = EnvelopeBuilder(TypeRegistry())
    v1 = rel(("id", INT4, True), ("n", INT4, False), name="t")
    v2 = rel(("id", INT4, True), ("n", TEXT, False), ("extra", INT4, False), name="t")
    e1 = builder.build(BEGIN, Change(op="insert", relation=v1, new=(b"1", b"2")), 0)
    e2 = builder.build(BEGIN, Change(op="insert", relation=v2, new=(b"1", b"2", b"3")), 1)
    assert orjson.loads(e1.body)["record"] == {"id": 1, "n": 2}
    assert orjson.loads(e2.body)["record"] == {"id": 1, "n": "2", "extra": 3}


def test_truncate_is_a_barrier() -> None:
    a = rel(("id", INT4, True), name="a", oid=1)
    b = rel(("id", INT4, True), name="b", oid=2)
    change = Change(op="truncate", relations=(a, b), cascade=True, restart_identity=False)
    event, body = build(change, seq=4)
    assert event.keys == ()
    assert event.op == "truncate"
    assert event.table == ""
    assert body == {
        "id": "00000000016B3748/0000000004",
        "op": "truncate",
        "table": None,
        "key": None,
        "record": None,
        "old": None,
        "commit_lsn": "0/16B3748",
        "xid": 735,
        "committed_at": "2024-01-02T03:04:05.123456+00:00",
        "tables": ["public.a", "public.b"],
        "cascade": True,
        "restart_identity": False,
    }


def test_message_utf8_json_stays_a_string() -> None:
    change = Change(op="message", prefix="outbox", content=b'{"a": 1}', message_lsn=5)
    event, body = build(change, seq=1)
    assert event.keys == ("message\x1foutbox",)
    assert event.table == ""
    assert body["op"] == "message"
    assert body["table"] is None
    assert body["prefix"] == "outbox"
    assert body["content"] == '{"a": 1}'
    assert body["content_encoding"] == "utf-8"
    assert body["id"] == "00000000016B3748/0000000001"


def test_message_binary_content_is_hex() -> None:
    event, body = build(Change(op="message", prefix="bin", content=b"\x00\xff\xfe"))
    assert body["content"] == "\\x00fffe"
    assert body["content_encoding"] == "hex"
    assert event.keys == ("message\x1fbin",)


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (NUMERIC, b"0.0000001", "0.0000001"),
        (NUMERIC, b"NaN", "NaN"),
        (NUMERIC, b"-Infinity", "-Infinity"),
        (FLOAT8, b"1.5", 1.5),
        (FLOAT8, b"NaN", "NaN"),
        (FLOAT8, b"Infinity", "Infinity"),
        (FLOAT8, b"-Infinity", "-Infinity"),
        (FLOAT8_ARRAY, b"{1.5,NaN,NULL}", [1.5, "NaN", None]),
        (INT4_ARRAY, b"{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (BYTEA, b"\\x00ff", "\\x00ff"),
        (TSTZ, b"2024-01-02 08:34:05+05:30", "2024-01-02T03:04:05+00:00"),
        (TSTZ, b"infinity", "infinity"),
        (DATE, b"0044-03-15 BC", "0044-03-15 BC"),
        (INTERVAL, b"P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),  # IntervalStyle=iso_8601
        (INTERVAL, b"P-1DT2H", "P-1DT2H"),
        (INTERVAL, b"PT0S", "PT0S"),
        (TIMETZ, b"03:04:05+05:30", "03:04:05+05:30"),
        (UUID_, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (JSONB, b'{"big": 1e400}', {"big": Decimal("1e400")}),  # a number, every digit
        (INT4_ARRAY, b"[0:2]={7,8,9}", "[0:2]={7,8,9}"),
        (869, b"10.0.0.1/8", "10.0.0.1/8"),
        (999_999, b'(1,"a b")', '(1,"a b")'),
    ],
)
def test_value_encoding(oid: int, text: bytes, expected: Any) -> None:
    t = rel(("id", INT4, True), ("v", oid, False), name="vals")
    _, body = build(Change(op="insert", relation=t, new=(b"1", text)))
    assert body["record"]["v"] == expected


def test_json_unicode_escapes_survive() -> None:
    # valid `json` (not jsonb) text with a lone surrogate escape: orjson refuses it
    t = rel(("id", INT4, True), ("v", 114, False), name="j")
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(
        BEGIN, Change(op="insert", relation=t, new=(b"1", b'{"s": "\\ud800"}')), 0
    )
    assert b'"\\ud800"' in event.body  # kept as the escape (orjson itself refuses to read it)
    assert json.loads(event.body)["record"]["v"] == {"s": "\ud800"}


def test_naive_committed_at_is_taken_as_utc() -> None:
    builder = EnvelopeBuilder(TypeRegistry())
    begin = Begin(xid=1, commit_lsn=(1 << 32) | 0x10, committed_at=datetime(2024, 5, 6, 7, 8, 9))
    event = builder.build(begin, Change(op="message", prefix="p", content=b""), 0)
    body = orjson.loads(event.body)
    assert body["committed_at"] == "2024-05-06T07:08:09+00:00"
    assert body["commit_lsn"] == "1/10"
    assert body["id"] == "0000000100000010/0000000000"
    other = Begin(xid=2, commit_lsn=0x20, committed_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    body = orjson.loads(builder.build(other, Change(op="message", prefix="p"), 0).body)
    assert (body["commit_lsn"], body["xid"]) == ("0/20", 2)


def test_bad_value_names_table_and_column() -> None:
    t = rel(("id", INT4, True), ("n", INT4, False), name="t")
    with pytest.raises(DecodeError, match=r"public\.t\.n: .*int4 \(oid 23\)"):
        build(Change(op="insert", relation=t, new=(b"1", b"x")))


def test_tuple_length_mismatch_is_an_error() -> None:
    t = rel(("id", INT4, True), ("n", INT4, False), name="t")
    with pytest.raises(DecodeError, match="3 columns"):
        build(Change(op="insert", relation=t, new=(b"1", b"2", b"3")))


def test_row_change_without_relation_is_an_error() -> None:
    with pytest.raises(DecodeError):
        build(Change(op="insert", new=(b"1",)))


def test_encode_json_big_ints_and_offsets() -> None:
    tz = timezone(timedelta(hours=-3, minutes=-30))
    out = json.loads(encode_json({"n": 10**30, "t": datetime(2024, 1, 1, tzinfo=tz)}))
    assert out == {"n": 10**30, "t": "2024-01-01T00:00:00-03:30"}


def _key_in_body(body: bytes) -> bytes:
    """The bytes of the envelope's "key" value, cut out of the body."""
    start = body.index(b',"key":') + len(b',"key":')
    end = body.index(b',"record":', start)
    return body[start:end]


KEY_JSON_CASES = [
    Change(op="insert", relation=USERS, new=users_row()),
    Change(op="update", relation=USERS, new=users_row(id_=b"8"), old=(b"7",), old_kind="K"),
    Change(op="delete", relation=USERS, old=(b"7", None, None, None, None), old_kind="K"),
    Change(
        op="insert",
        relation=rel(("b", TEXT, True), ("a", TEXT, True), name="pairs"),
        new=(b"x", b"\xc3\xa9"),
    ),
    Change(op="insert", relation=rel(("v", INT4, False), name="log", identity="n"), new=(b"1",)),
    # Values only the Python path takes (infinity): the key is still spliced in.
    Change(op="insert", relation=rel(("at", TSTZ, True), name="ts"), new=(b"infinity",)),
    Change(op="update", relation=USERS, new=(b"7", UNCHANGED_TOAST, None, None, None)),
]


@pytest.mark.parametrize("speedups", [True, False], ids=["c", "python"])
@pytest.mark.parametrize("change", KEY_JSON_CASES, ids=lambda c: f"{c.op}")
def test_key_json_is_the_bodys_key(
    monkeypatch: pytest.MonkeyPatch, speedups: bool, change: Change
) -> None:
    from walrelay.pipeline import envelope

    if not speedups:
        monkeypatch.setattr(envelope, "_c_encode_object", None)
    event, body = build(change)
    assert event.key_json is not None
    assert event.key_json == _key_in_body(event.body)
    assert orjson.loads(event.key_json) == body["key"]


def test_key_json_of_truncate_and_message_is_null() -> None:
    a = rel(("id", INT4, True), name="a", oid=1)
    truncate, _ = build(Change(op="truncate", relations=(a,)))
    message, _ = build(Change(op="message", prefix="p", content=b"x"))
    assert truncate.key_json == b"null" and message.key_json == b"null"


def test_a_value_that_is_not_utf8_is_its_bytes_in_hex_and_listed() -> None:
    """A SQL_ASCII database's bytes (walrelay.source.encoding): lossless, and
    marked, so that a text which merely looks like ``\\x41ff`` is not taken for it."""
    t = rel(("k", TEXT, True), ("v", TEXT, False), ("a", 1009, False), ("w", TEXT, False))
    change = Change(op="insert", relation=t, new=(b"k\xff", b"A\xffB", b"{A\xff,x}", b"\\x41ff"))
    event, body = build(change)
    assert body["record"] == {
        "k": "\\x6bff",
        "v": "\\x41ff42",
        "a": "\\x7b41ff2c787d",
        "w": "\\x41ff",
    }
    assert body["key"] == {"k": "\\x6bff"}
    assert body["not_utf8"] == ["k", "v", "a"]
    assert event.keys == ("public.users\x1fk\udcff",)
    _, plain = build(Change(op="insert", relation=t, new=(b"k", b"\xc3\xa9", b"{x}", None)))
    assert "not_utf8" not in plain and plain["record"]["a"] == ["x"]
