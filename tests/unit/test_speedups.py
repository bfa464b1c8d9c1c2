"""The C fast paths against the pure-Python reference, byte for byte.

``walrelay._speedups`` may only ever answer what the Python code answers, or
None (take the Python path). Values are generated the way PostgreSQL prints
them (where the fast path must be taken) and as arbitrary bytes (where it may
decline but never disagree).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import string
import sys
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest import mock
from uuid import UUID

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from walrelay import speedups
from walrelay.errors import DecodeError
from walrelay.model import (
    UNCHANGED_TOAST,
    Begin,
    Change,
    Column,
    Event,
    RawTuple,
    Relation,
    format_event_id,
)
from walrelay.pipeline import envelope
from walrelay.pipeline.envelope import _C_KINDS, EnvelopeBuilder, _default
from walrelay.source import pgoutput
from walrelay.source.transactions import TransactionAssembler
from walrelay.source.types import TypeRegistry

REGISTRY = TypeRegistry()
encode_object = speedups.encode_object
decode_tuple = speedups.decode_tuple


def test_the_c_extension_is_built() -> None:
    # pip install compiles it; a missing compiler silently leaves the slow path.
    assert speedups.ENABLED, "walrelay._speedups is not built: pip install -e . with gcc present"


def python_json(oid: int, raw: bytes) -> bytes | None:
    """What the Python path writes for one value, or None if it cannot convert it."""
    try:
        value = REGISTRY.converter(oid)(raw)
        return orjson.dumps(value, default=_default)
    except Exception:
        return None


def c_json(oid: int, raw: bytes | None) -> bytes | None:
    assert encode_object is not None
    kind = _C_KINDS[oid].encode()
    out = encode_object((b'"v":',), kind, (None,), (raw,), None)
    if out is None:
        return None
    assert out.startswith(b'{"v":') and out.endswith(b"}")
    return out[5:-1]


def agrees(oid: int, raw: bytes) -> bytes | None:
    """Asserts the C answer is the Python one or None; returns the C answer."""
    fast = c_json(oid, raw)
    if fast is not None:
        assert fast == python_json(oid, raw), (oid, raw)
    return fast


# -- values as PostgreSQL prints them: the fast path must take them ------------

INTEGERS = {21: (-(2**15), 2**15 - 1), 23: (-(2**31), 2**31 - 1), 20: (-(2**63), 2**63 - 1)}


@given(st.sampled_from(sorted(INTEGERS)), st.data())
def test_integers(oid: int, data: st.DataObject) -> None:
    lo, hi = INTEGERS[oid]
    raw = str(data.draw(st.integers(lo, hi))).encode()
    assert agrees(oid, raw) == raw


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 60
    )
)
def test_numeric(value: Decimal) -> None:
    raw = format(value, "f").encode()  # PostgreSQL never prints an exponent
    if raw.startswith(b"-0") and not raw.strip(b"-0."):
        raw = raw[1:]  # nor a negative zero
    assert agrees(1700, raw) == b'"' + raw + b'"'


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"0", b"0.000", b"-1.50"])
def test_numeric_specials(raw: bytes) -> None:
    assert agrees(1700, raw) == b'"' + raw + b'"'


@given(st.uuids())
def test_uuid(value: UUID) -> None:
    raw = str(value).encode()
    assert agrees(2950, raw) == b'"' + raw + b'"'


@pytest.mark.parametrize(("raw", "out"), [(b"t", b"true"), (b"f", b"false")])
def test_bool(raw: bytes, out: bytes) -> None:
    assert agrees(16, raw) == out


@given(st.sampled_from([25, 1043, 1042, 19]), st.text())
def test_text(oid: int, value: str) -> None:
    assume("\x00" not in value)  # PostgreSQL text cannot hold NUL
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        assume(False)  # lone surrogates: not UTF-8 at all
    assert agrees(oid, raw) is not None


def test_text_escapes_like_orjson() -> None:
    raw = ("".join(chr(i) for i in range(1, 0x20)) + '"\\ /\x7f\u2028é😀').encode()
    assert agrees(25, raw) is not None


def pg_timestamp_text(value: datetime, tz: bool) -> bytes:
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return (text + ("+00" if tz else "")).encode()


@given(st.datetimes(min_value=datetime(1000, 1, 1)), st.booleans())
def test_timestamps(value: datetime, tz: bool) -> None:
    oid = 1184 if tz else 1114
    assert agrees(oid, pg_timestamp_text(value, tz)) is not None


@given(st.dates(min_value=date(1000, 1, 1)))
def test_dates(value: date) -> None:
    assert agrees(1082, value.isoformat().encode()) is not None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES, st.sampled_from([None, 0, 2]), st.sampled_from([114, 3802]))
def test_json_documents(value: Any, indent: int | None, oid: int) -> None:
    # As json keeps its input's layout: compact, or indented with newlines.
    raw = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    out = agrees(oid, raw)
    assert out == raw.replace(b"\n", b" ")
    assert json.loads(out) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"123456789012345678901234567890",
        b'{"x": 1e400, "y": 0.1000000000000000000001}',
        b'{\r\n  "a": "caf\xc3\xa9"\r\n}',
        b"[" * 500 + b"]" * 500,
    ],
)
def test_json_kept_as_printed(raw: bytes) -> None:
    assert agrees(3802, raw) is not None


def test_interval_is_postgres_iso_text() -> None:
    assert agrees(1186, b"P1Y2M-3DT4H5M6.5S") == b'"P1Y2M-3DT4H5M6.5S"'


# -- anything else: the fast path may decline, never disagree -------------------


@pytest.mark.parametrize(
    ("oid", "raw"),
    [
        (23, b"-0"),
        (23, b"007"),
        (23, b"+1"),
        (23, b""),
        (20, b"12345678901234567890"),
        (1700, b"1e5"),
        (1700, b"01.5"),
        (1700, b".5"),
        (1700, b"1."),
        (2950, b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        (2950, b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
        (16, b"true"),
        (25, b"\xff\xfe"),
        (25, b"\xed\xa0\x80"),  # an encoded surrogate
        (1184, b"infinity"),
        (1184, b"2024-01-02 08:34:05+05:30"),
        (1184, b"0044-03-15 00:00:00+00 BC"),
        (1184, b"0099-01-02 03:04:05+00"),
        (1184, b"2024-01-02 24:00:00+00"),
        (1114, b"2024-01-02 03:04:05.1234567"),
        (1114, b"2024-01-02T03:04:05"),
        (1082, b"0044-03-15 BC"),
        (1082, b"12345-01-01"),
        (3802, b'{"a": "\xff"}'),  # not UTF-8
        (3802, b"[" * 501 + b"]" * 501),  # maybe deeper than MAX_JSON_DEPTH
        (114, b'["[{", ' + b'"{" ' * 600 + b"]"),
    ],
)
def test_declines_what_it_does_not_know(oid: int, raw: bytes) -> None:
    assert c_json(oid, raw) is None


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(_C_KINDS)),
    st.one_of(
        st.binary(max_size=40),
        st.text(alphabet=string.digits + "-+.:eE TZNaInfinityt", max_size=32).map(str.encode),
    ),
)
def test_arbitrary_bytes_never_disagree(oid: int, raw: bytes) -> None:
    agrees(oid, raw)


def test_null_unchanged_and_bad_rows() -> None:
    assert encode_object is not None
    names = (b'"a":', b'"b":')
    assert encode_object(names, b"ii", (None, None), (b"1", None), None) == b'{"a":1,"b":null}'
    assert encode_object(names, b"ii", (None, None), (b"1", UNCHANGED_TOAST), None) is None
    assert encode_object(names, b"ii", (None, None), (b"1",), None) is None  # length
    assert encode_object(names, b"ii", (None, None), (b"1", b"2"), (1, 5)) is None  # index
    assert encode_object(names, b"ii", (None, None), (b"1", b"2"), (1, 0)) == b'{"a":2,"b":1}'


def test_call_kind_uses_the_encoder_and_declines_on_its_errors() -> None:
    assert encode_object is not None

    def fails(raw: bytes) -> bytes:
        raise ValueError("no")

    assert encode_object((b'"a":',), b"c", (lambda raw: b"[" + raw + b"]",), (b"1",), None) == (
        b'{"a":[1]}'
    )
    assert encode_object((b'"a":',), b"c", (fails,), (b"1",), None) is None


# -- decode_tuple against the Python decoder ------------------------------------

values = st.one_of(
    st.none(), st.just(UNCHANGED_TOAST), st.binary(max_size=30).map(lambda b: ("t", b))
)


def tuple_data(row: list[Any]) -> bytes:
    out = len(row).to_bytes(2, "big")
    for v in row:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        else:
            out += v[0].encode() + len(v[1]).to_bytes(4, "big") + v[1]
    return out


def relation(n: int) -> Relation:
    return Relation(1, "public", "t", "d", tuple(Column(f"c{i}", 25, -1, i == 0) for i in range(n)))


@given(st.lists(values, max_size=8), st.binary(max_size=4))
def test_decode_tuple_matches_python(row: list[Any], trailer: bytes) -> None:
    assert decode_tuple is not None
    buf = b"xx" + tuple_data(row) + trailer
    expected = pgoutput._tuple_py(buf, 2, relation(len(row)))
    assert decode_tuple(buf, 2, len(row)) == expected


@given(st.binary(max_size=40), st.integers(0, 6))
def test_decode_tuple_on_garbage_is_none_or_python(buf: bytes, ncols: int) -> None:
    assert decode_tuple is not None
    fast = decode_tuple(buf, 0, ncols)
    try:
        slow: Any = pgoutput._tuple_py(buf, 0, relation(ncols))
    except Exception:
        slow = None
    if fast is not None:
        assert fast == slow


# -- whole envelopes: C and Python paths give the same bytes --------------------

COLUMNS = [
    ("id", 20, b"42"),
    ("n", 1700, b"-12.50"),
    ("u", 2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("ok", 16, b"t"),
    ("s", 25, 'quote " and \\ \n é'.encode()),
    ("d", 1082, b"2024-02-29"),
    ("ts", 1114, b"2024-01-02 03:04:05.5"),
    ("tz", 1184, b"2024-01-02 03:04:05+00"),
    ("j", 3802, b'{"a": [1, 2.5, null]}'),
    ("f", 701, b"NaN"),
    ("iv", 1186, b"P1Y-2M3DT4H5M6S"),
    ("jl", 114, b'{"n": 123456789012345678901234567890,\n "d": 1e400}'),
    ("deep", 3802, b"[" * 600 + b"]" * 600),
]


def table(identity: str = "d") -> Relation:
    return Relation(
        16384,
        "public",
        "all types",
        identity,
        tuple(Column(n, oid, -1, n == "id" or identity == "f") for n, oid, _ in COLUMNS),
    )


ROW: RawTuple = tuple(raw for _, _, raw in COLUMNS)
OTHER: RawTuple = (b"43", *ROW[1:4], b"other", *ROW[5:])
BEGIN = Begin(9, 0x16B3748, datetime(2024, 1, 2, 3, 4, 5, 123456, UTC))


def bodies(change: Change, key_columns: dict[str, list[str]] | None = None) -> tuple[bytes, bytes]:
    fast = EnvelopeBuilder(TypeRegistry(), key_columns).build(BEGIN, change, 7).body
    with mock.patch.object(envelope, "_c_encode_object", None):
        slow = EnvelopeBuilder(TypeRegistry(), key_columns).build(BEGIN, change, 7).body
    return fast, slow


@pytest.mark.parametrize(
    "change",
    [
        Change("insert", table(), ROW),
        Change("update", table(), OTHER),
        Change("update", table(), OTHER, (b"42",) + (None,) * 12, "K"),
        Change("update", table("f"), OTHER, ROW, "O"),
        Change("delete", table(), None, (b"42",) + (None,) * 12, "K"),
        Change("delete", table("f"), None, ROW, "O"),
        Change("update", table(), (b"42", UNCHANGED_TOAST, *ROW[2:])),
        Change("insert", table(), (b"1", b"NaN", *ROW[2:7], b"infinity", *ROW[8:])),
    ],
    ids=["insert", "update", "update-K", "update-O", "delete-K", "delete-O", "toast", "infinity"],
)
def test_envelopes_are_identical(change: Change) -> None:
    fast, slow = bodies(change)
    assert fast == slow


def events(change: Change, key_columns: dict[str, list[str]] | None = None) -> tuple[Any, Any]:
    """The whole event (every field, not only the body) from both paths."""
    fast = EnvelopeBuilder(TypeRegistry(), key_columns).build(BEGIN, change, 7)
    with mock.patch.object(envelope, "_c_encode_object", None):
        slow = EnvelopeBuilder(TypeRegistry(), key_columns).build(BEGIN, change, 7)
    return [getattr(fast, f.name) for f in fields(fast)], [
        getattr(slow, f.name) for f in fields(slow)
    ]


def keyless() -> Relation:
    return Relation(16385, "public", "no key", "n", (Column("v", 25, -1, False),))


@pytest.mark.parametrize(
    ("change", "key_columns"),
    [
        (Change("insert", table(), ROW), None),
        # the key separator in a key value, escaped
        (Change("insert", table(), (*ROW[:4], b"a\x1fb", *ROW[5:])), {"public.all types": ["s"]}),
        (Change("insert", table(), ROW), {"public.all types": ["s", "d"]}),  # composite key
        (Change("insert", keyless(), (b"x",)), None),
        (Change("insert", table("f"), ROW), None),  # every column flagged as key
    ],
    ids=["insert", "separator", "composite", "keyless", "identity-full"],
)
def test_insert_events_are_identical_field_by_field(
    change: Change, key_columns: dict[str, list[str]] | None
) -> None:
    """The insert fast path (EnvelopeBuilder._insert_event_c) makes the event the
    general path makes: keys, key JSON, op, table... not only the body."""
    fast, slow = events(change, key_columns)
    assert fast == slow


@pytest.mark.parametrize("seq", [0, 4095, 4096, 1234567])
@pytest.mark.parametrize("op", ["insert", "update"])
def test_event_ids_are_padded_alike_inside_and_past_the_table(seq: int, op: str) -> None:
    """The C paths take a transaction's first sequences from a table
    (envelope._PADDED_SEQS) and format the rest: the id is format_event_id's."""
    change = Change(op, table(), ROW)  # type: ignore[arg-type]
    fast = EnvelopeBuilder(TypeRegistry()).build(BEGIN, change, seq)
    with mock.patch.object(envelope, "_c_encode_object", None):
        slow = EnvelopeBuilder(TypeRegistry()).build(BEGIN, change, seq)
    assert fast.body == slow.body
    assert fast.body.startswith(b'{"id":"%s"' % format_event_id(BEGIN.commit_lsn, seq).encode())


def test_key_columns_outside_the_old_key_take_the_python_path() -> None:
    change = Change("delete", table(), None, (b"42",) + (None,) * 12, "K")
    fast, slow = bodies(change, {"public.all types": ["u"]})
    assert fast == slow
    assert orjson.loads(fast)["key"] == {}


def test_registered_types_are_never_taken_as_built_in() -> None:
    registry = TypeRegistry()
    registry.register(23, "my_int4")  # now text
    t = Relation(1, "public", "t", "d", (Column("id", 23, -1, True),))
    body = EnvelopeBuilder(registry).build(BEGIN, Change("insert", t, (b"5",)), 0).body
    assert orjson.loads(body)["record"] == {"id": "5"}


def test_speedups_declines_for_every_row_it_cannot_write_exactly() -> None:
    # Spot check of the slow-path fallback: a timestamp before year 1000.
    t = Relation(1, "public", "t", "d", (Column("ts", 1184, -1, True),))
    old = datetime(999, 1, 1, tzinfo=UTC) + timedelta(microseconds=5)
    change = Change("insert", t, (pg_timestamp_text(old, True),))
    fast, slow = bodies(change)
    assert fast == slow


# -- inserts straight from the wire (EnvelopeBuilder.inserts_from_wire) -----------

XLOG_HEAD = b"w" + bytes(24)  # an XLogData frame's header (start, end, time)


def insert_message(relation: Relation, row: list[Any] | RawTuple) -> bytes:
    """An XLogData frame of a pgoutput Insert: 'I', the relation OID, 'N', the new tuple."""
    cells = [v if v is None or v is UNCHANGED_TOAST else ("t", v) for v in row]
    return XLOG_HEAD + b"I" + relation.oid.to_bytes(4, "big") + b"N" + tuple_data(cells)


def fields_of(event: Any) -> list[Any]:
    return [getattr(event, f.name) for f in fields(event)]


def from_wire(
    relation: Relation,
    frames: list[bytes],
    key_columns: dict[str, list[str]] | None = None,
    seq: int = 7,
    start: int = 0,
    begin: Begin = BEGIN,
) -> list[list[Any]]:
    built = EnvelopeBuilder(TypeRegistry(), key_columns).inserts_from_wire(
        begin, relation, frames, start, seq
    )
    assert all(type(e) is Event for e in built)  # made in C, without Event.__init__
    return [fields_of(e) for e in built]


def reference(
    relation: Relation,
    rows: list[RawTuple],
    key_columns: dict[str, list[str]] | None = None,
    seq: int = 7,
    begin: Begin = BEGIN,
) -> list[list[Any]]:
    """The pure-Python envelope builder's events of the decoded changes."""
    with mock.patch.object(envelope, "_c_encode_object", None):
        builder = EnvelopeBuilder(TypeRegistry(), key_columns)
        return [
            fields_of(builder.build(begin, Change("insert", relation, row), seq + i))
            for i, row in enumerate(rows)
        ]


@pytest.mark.parametrize(
    ("relation", "row", "key_columns"),
    [
        (table(), (*ROW[:12], b"[]"), None),
        (table(), (*ROW[:4], b"a\x1fb", *ROW[5:12], b"[]"), {"public.all types": ["s"]}),
        (table(), (*ROW[:12], b"[]"), {"public.all types": ["s", "d"]}),
        (table(), (*ROW[:4], None, *ROW[5:12], None), {"public.all types": ["s", "id"]}),
        (keyless(), (b"x",), None),
        (table("f"), (*ROW[:12], b"[]"), None),
        (Relation(3, "public", "empty", "d", ()), (), None),
    ],
    ids=["insert", "separator", "composite", "null-key-part", "keyless", "full", "no-columns"],
)
def test_inserts_from_the_wire_are_identical_field_by_field(
    relation: Relation, row: RawTuple, key_columns: dict[str, list[str]] | None
) -> None:
    wire = from_wire(relation, [insert_message(relation, row)], key_columns)
    assert wire, "the common case must take the wire path"
    assert wire == reference(relation, [row], key_columns)


@pytest.mark.parametrize("name", ["tå", "naïve \x1f", "日本"])
def test_the_scheduling_key_of_any_table_name_is_pythons(name: str) -> None:
    """The C code writes the table's part of the scheduling key and the key
    values in one piece: non-ASCII names, the key separator in a name or a
    value."""
    relation = Relation(
        7, "public", name, "d", (Column("id", 25, -1, True), Column("v", 25, -1, False))
    )
    row = (b"\xc3\xa9\x1fz", b"x")
    wire = from_wire(relation, [insert_message(relation, row)])
    assert wire, "the common case must take the wire path"
    assert wire == reference(relation, [row])


@pytest.mark.parametrize("seq", [0, 4095, 4096, 1234567, 9999999998])
def test_inserts_from_the_wire_pad_the_id_alike(seq: int) -> None:
    frames = [insert_message(keyless(), (b"x",))] * 2
    assert from_wire(keyless(), frames, seq=seq) == reference(keyless(), [(b"x",)] * 2, seq=seq)


def test_a_run_ends_at_the_first_frame_it_cannot_take() -> None:
    """A run is the Inserts into the relation from ``start``: it stops at another
    relation's Insert, another message, a keepalive, an unchanged TOAST value,
    a value the C encoder leaves to Python and a message with trailing bytes."""
    t = table()
    rows = [(str(i).encode(), *ROW[1:12], b"[]") for i in range(3)]
    run = [insert_message(t, r) for r in rows]
    stoppers = [
        insert_message(keyless(), (b"x",)),
        XLOG_HEAD + b"U" + t.oid.to_bytes(4, "big") + b"N" + tuple_data([None] * 13),
        b"k" + bytes(17),
        insert_message(t, (b"42", UNCHANGED_TOAST, *ROW[2:12], b"[]")),
        insert_message(t, (*ROW[:12], b"[" * 600 + b"]" * 600)),  # too deep: Python's
        insert_message(t, (*ROW[:12], b"[]")) + b"\x00",
        insert_message(t, (*ROW[:12], b"[]"))[:-1],
    ]
    for stopper in stoppers:
        frames = [b"other", *run, stopper, *run]
        assert from_wire(t, frames, start=1) == reference(t, rows)
        assert from_wire(t, frames, start=4) == []
    assert from_wire(t, run, start=3) == []


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from([UTC, None, timezone(timedelta(hours=2)), timezone(timedelta(0))]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
def test_the_transaction_head_from_c_is_pythons(
    at: datetime, tz: timezone | None, commit_lsn: int, xid: int
) -> None:
    """The C code writes a transaction's id prefix, LSN, xid and commit time
    itself (any LSN and xid; the commit time in UTC or naive, which the builder
    reads as UTC; a commit time in another zone or before year 1000 is left to
    Python): the same bytes as EnvelopeBuilder._start."""
    begin = Begin(xid, commit_lsn, at.replace(tzinfo=tz))
    row = (b"x",)
    frames = [insert_message(keyless(), row)] * 2
    in_c = tz in (UTC, None) and at.year >= 1000
    no_python_head = mock.patch.object(EnvelopeBuilder, "_start", side_effect=AssertionError)
    with no_python_head if in_c else contextlib.nullcontext():
        got = from_wire(keyless(), frames, begin=begin)
    assert got == reference(keyless(), [row] * 2, begin=begin)


def test_a_transaction_begun_on_the_general_path_keeps_its_head() -> None:
    builder = EnvelopeBuilder(TypeRegistry())
    relation = keyless()
    first = builder.build(BEGIN, Change("insert", relation, (b"x",)), 0)
    [second] = builder.inserts_from_wire(BEGIN, relation, [insert_message(relation, (b"x",))], 0, 1)
    assert second.body == first.body.replace(b"/0000000000", b"/0000000001")


def test_events_from_the_wire_hold_and_release_their_parts() -> None:
    """The C code fills the Event's slots itself: every reference it takes is
    dropped with the events (a leak or a missing reference shows here)."""
    relation = keyless()
    builder = EnvelopeBuilder(TypeRegistry())
    frames = [insert_message(relation, (b"x",))] * 100
    table = builder.inserts_from_wire(BEGIN, relation, frames, 0, 0)[0].table  # plan made
    table_refs, at_refs = sys.getrefcount(table), sys.getrefcount(BEGIN.committed_at)
    events = builder.inserts_from_wire(BEGIN, relation, frames, 0, 0)
    assert [e.seq for e in events] == list(range(100))
    assert sys.getrefcount(table) >= table_refs + 100
    del events
    assert (sys.getrefcount(table), sys.getrefcount(BEGIN.committed_at)) == (table_refs, at_refs)


def test_the_c_encoder_takes_only_the_event_class_it_can_fill() -> None:
    c = importlib.import_module("walrelay._speedups")

    @dataclass(slots=True)
    class Fewer:
        commit_lsn: int

    for cls in (Fewer, dict, 42):
        with pytest.raises(TypeError):
            c.set_event_type(cls)


def test_a_run_is_at_most_the_limit() -> None:
    frames = [insert_message(keyless(), (b"x",))] * (envelope._RUN_LIMIT + 5)
    assert len(from_wire(keyless(), frames)) == envelope._RUN_LIMIT


key_bytes = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\x1f", b"a\x1f\x1fb", b"\xff\x1f\xc3", b"\xe2\x82", ("é" * 300).encode()]),
)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from([*sorted(_C_KINDS), 701, 1000, 17]), st.none() | key_bytes),
        max_size=6,
    ),
    st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_inserts_from_the_wire_never_disagree(
    cols: list[tuple[int, bytes | None]], keys: list[bool]
) -> None:
    """Any column types, values (NULL, invalid UTF-8, the key separator, long,
    non-ASCII) and key columns: the wire path declines (an empty run) or makes
    exactly the reference's event."""
    relation = Relation(
        5,
        "public",
        "t",
        "d",
        tuple(Column(f"c{i}", oid, -1, keys[i]) for i, (oid, _) in enumerate(cols)),
    )
    row = tuple(v for _, v in cols)
    wire = from_wire(relation, [insert_message(relation, row)])
    try:
        expected = reference(relation, [row])
    except Exception:
        assert wire == []  # the reference raises (a value it cannot convert)
        return
    assert wire in ([], expected)


_US_RANGE = (
    int((datetime(1, 1, 1, tzinfo=UTC) - pgoutput.PG_EPOCH).total_seconds()) * 1_000_000,
    int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - pgoutput.PG_EPOCH).total_seconds())
    * 1_000_000
    + 999_999,
)


@settings(max_examples=2000)
@given(
    st.one_of(
        st.integers(*_US_RANGE),
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([*_US_RANGE, _US_RANGE[0] - 1, _US_RANGE[1] + 1, 0, -1, 86_399_999_999]),
    )
)
def test_pg_timestamp_in_c_is_pythons(us: int) -> None:
    """A Begin's commit time: the same aware datetime as the Python function,
    or None where Python raises (outside years 1-9999)."""
    assert speedups.pg_timestamp is not None
    got = speedups.pg_timestamp(us)
    try:
        expected = pgoutput.pg_timestamp(us)
    except DecodeError:
        assert got is None
    else:
        assert got == expected and got.tzinfo is UTC and type(got) is datetime


def test_a_begin_out_of_datetimes_range_is_a_decode_error() -> None:
    late = (_US_RANGE[1] + 1).to_bytes(8, "big", signed=True)
    begin = b"B" + (0x1000).to_bytes(8, "big") + late + (7).to_bytes(4, "big")
    with pytest.raises(DecodeError, match="timestamp out of range"):
        list(TransactionAssembler().feed(begin))
