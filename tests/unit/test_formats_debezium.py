"""format: debezium, per type and per op, from pgoutput's text through walrelay's
envelope to Debezium's JSON. Expected values are what Debezium 3.6.1 emitted
for the same input (tests/data/debezium/golden.jsonl) unless said otherwise."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from walrelay.format_config import DebeziumOptions
from walrelay.model import UNCHANGED_TOAST, Begin, Change, Column, Event, RawValue, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.formats import SNAPSHOT_BACKFILL, SNAPSHOT_INITIAL, SNAPSHOT_NONE
from walrelay.pipeline.formats.debezium import DebeziumFormatter
from walrelay.pipeline.formats.debezium_values import interval_micros, value_converter
from walrelay.source.types import TypeRegistry

BEGIN = Begin(xid=735, commit_lsn=0x16B3748, committed_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
NOW_NS = 1_700_000_000_123_456_789


def relation(*cols: tuple[str, int, int], key: tuple[str, ...] = ("id",), oid: int = 1) -> Relation:
    columns = tuple(Column(n, t, m, n in key) for n, t, m in cols)
    return Relation(oid, "public", "t", "d", columns)


def formatter(builder: EnvelopeBuilder, **options: Any) -> DebeziumFormatter:
    return DebeziumFormatter(
        DebeziumOptions(**options),
        name="golden",
        db="app",
        version="walrelay-test",
        relation=builder.relation,
        clock=lambda: NOW_NS,
    )


def render(
    rel: Relation,
    change: Change,
    snapshot: str = SNAPSHOT_NONE,
    **options: Any,
) -> tuple[dict[str, Any], Event]:
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(BEGIN, change, 3)
    out = formatter(builder, **options).render(event, snapshot)
    return orjson.loads(out.body), out


def one_value(oid: int, typmod: int, text: str | None, **options: Any) -> Any:
    rel = relation(("id", 23, -1), ("v", oid, typmod))
    raw: RawValue = None if text is None else text.encode()
    value, _ = render(rel, Change(op="insert", relation=rel, new=(b"1", raw)), **options)
    return value["after"]["v"]


# -- values: (type oid, typmod, pgoutput text) -> Debezium JSON ----------------------

NUMERIC_12_3 = (12 << 16 | 3) + 4
NUMERIC_6_2 = (6 << 16 | 2) + 4


@pytest.mark.parametrize(
    ("oid", "typmod", "text", "expected"),
    [
        (16, -1, "t", True),
        (1560, 1, "1", True),  # bit(1) -> boolean
        (1560, 10, "1010000011", "gwI="),  # bit(n) -> little-endian bytes, ceil(n/8)
        (1562, 16, "101", "BQ=="),  # varbit -> as many bytes as the value needs
        (21, -1, "32767", 32767),
        (23, -1, "-2147483648", -2147483648),
        (20, -1, "9223372036854775807", 9223372036854775807),
        (26, -1, "4000000000", 4000000000),
        (700, -1, "1.5", 1.5),
        (701, -1, "3.141592653589793", 3.141592653589793),
        (1700, NUMERIC_12_3, "123456789.125", "HL6ZGoU="),  # unscaled, two's complement
        (1700, NUMERIC_12_3, "-0.500", "/gw="),
        (
            1700,
            -1,
            "12345678901234567890.0000000001",
            {"scale": 10, "value": "AY7pD/bDc+DuBKkIAQ=="},
        ),
        (1700, -1, "-7", {"scale": 0, "value": "+Q=="}),
        (790, -1, "$1,234.56", "AeJA"),  # money: scale 2
        (1042, 7, "ab ", "ab "),
        (1043, 24, "varchar value", "varchar value"),
        (25, -1, "text with ünïcode", "text with ünïcode"),
        (17, -1, "\\x00ff10", "AP8Q"),
        (1082, -1, "2024-02-29", 19782),  # days since the epoch
        (1082, -1, "1969-12-31", -1),
        (1083, -1, "13:14:15.123456", 47655123456),  # time(6): micros
        (1083, 3, "13:14:15.123", 47655123),  # time(3): millis
        (1083, 0, "13:14:15", 47655000),
        (1266, -1, "13:14:15.5+05:30", "07:44:15.5Z"),  # timetz: in UTC
        (1114, -1, "2024-01-02 03:04:05.123456", 1704164645123456),  # micros
        (1114, 3, "2024-01-02 03:04:05.123", 1704164645123),  # millis
        (1114, -1, "1969-12-31 23:59:59.999999", -1),
        (1184, -1, "2024-01-02 01:04:05.123456+00", "2024-01-02T01:04:05.123456Z"),
        (1184, -1, "1970-01-01 00:00:00+00", "1970-01-01T00:00:00.000000Z"),
        (1184, 3, "2024-01-02 03:04:05.123+00", "2024-01-02T03:04:05.123Z"),
        (1186, -1, "P3DT4H5M6.5S", 273906500000),  # micros
        (1186, -1, "P-3DT-1S", -259201000000),
        (2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (3802, -1, '{"a": 1, "b": [true, null]}', '{"a": 1, "b": [true, null]}'),
        (114, -1, '{"a": 1, "b": [true, null, 2.5]}', '{"a": 1, "b": [true, null, 2.5]}'),
        (142, -1, "<x>1</x>", "<x>1</x>"),
        (869, -1, "192.168.0.1/24", "192.168.0.1/24"),
        (829, -1, "08:00:2b:01:02:03", "08:00:2b:01:02:03"),
        (
            600,
            -1,
            "(1.5,-2)",
            {"x": 1.5, "y": -2.0, "wkb": "AQEAAAAAAAAAAAD4PwAAAAAAAADA", "srid": None},
        ),
        (3904, -1, "[1,10)", "[1,10)"),
        (3912, -1, "[2024-01-01,2024-02-01)", "[2024-01-01,2024-02-01)"),
        (1007, -1, "{1,NULL,3}", [1, None, 3]),
        (1009, -1, '{"a b",c}', ["a b", "c"]),
        (1231, NUMERIC_6_2, "{1.50,NULL}", ["AJY=", None]),  # elements take the column's scale
        (1001, -1, '{"\\\\x0102"}', ["AQI="]),
        (1182, -1, "{2024-01-01}", [19723]),
        (1115, -1, '{"2024-01-02 03:04:05.5"}', [1704164645500000]),
        (1185, -1, '{"2024-01-02 03:04:05.5+00"}', ["2024-01-02T03:04:05.500000Z"]),
        (23, -1, None, None),
    ],
)
def test_value(oid: int, typmod: int, text: str | None, expected: Any) -> None:
    assert one_value(oid, typmod, text) == expected


def test_interval_with_months_uses_debeziums_average_month() -> None:
    # Debezium 3.6.1 emitted 37091106500000 for '1 year 2 months 3 days 04:05:06.5'.
    assert interval_micros("P1Y2M3DT4H5M6.5S") == 37091106500000
    assert interval_micros("P-1Y-2M-3DT-4H-5M-6.5S") == -37091106500000
    assert interval_micros("-P3DT1S") == -259201000000
    assert interval_micros("PT0S") == 0
    assert interval_micros("not a duration") is None


def test_unsupported_geometry_columns_are_left_out_as_debezium_does() -> None:
    rel = relation(("id", 23, -1), ("b", 603, -1), ("v", 25, -1))
    value, _ = render(rel, Change(op="insert", relation=rel, new=(b"1", b"(1,2),(3,4)", b"x")))
    assert value["after"] == {"id": 1, "v": "x"}


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "oid", "typmod", "text", "expected"),
    [
        ({"decimal_handling": "string"}, 1700, NUMERIC_12_3, "123456789.125", "123456789.125"),
        ({"decimal.handling.mode": "double"}, 1700, NUMERIC_12_3, "-0.500", -0.5),
        ({"decimal_handling": "string"}, 790, -1, "-$1,234.56", "-1234.56"),
        ({"decimal_handling": "string"}, 1700, -1, "NaN", "NaN"),
        ({}, 1700, -1, "NaN", None),  # precise: Decimal has no NaN
        ({"binary_handling": "hex"}, 17, -1, "\\x00ff10", "00ff10"),
        ({"binary_handling": "base64"}, 17, -1, "\\x00ff10", "AP8Q"),
        ({"time_precision": "connect"}, 1083, -1, "13:14:15.123456", 47655123),
        ({"time.precision.mode": "connect"}, 1114, -1, "2024-01-02 03:04:05.123456", 1704164645123),
    ],
)
def test_option(options: dict[str, Any], oid: int, typmod: int, text: str, expected: Any) -> None:
    assert one_value(oid, typmod, text, **options) == expected


# -- ops -----------------------------------------------------------------------------

PLAIN = relation(("id", 23, -1), ("v", 25, -1), ("n", 23, -1))


def test_insert_envelope_and_source() -> None:
    value, event = render(PLAIN, Change(op="insert", relation=PLAIN, new=(b"1", b"a", b"2")))
    assert list(value) == [
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    ]
    assert value["op"] == "c"
    assert value["before"] is None
    assert value["after"] == {"id": 1, "v": "a", "n": 2}
    assert value["transaction"] is None
    assert (value["ts_ms"], value["ts_us"], value["ts_ns"]) == (
        NOW_NS // 10**6,
        NOW_NS // 10**3,
        NOW_NS,
    )
    committed_us = 1704164645 * 10**6
    assert value["source"] == {
        "version": "walrelay-test",
        "connector": "postgresql",
        "name": "golden",
        "ts_ms": committed_us // 1000,
        "snapshot": "false",
        "db": "app",
        "sequence": f'["{0x16B3748}","{0x16B3748}"]',
        "ts_us": committed_us,
        "ts_ns": committed_us * 1000,
        "schema": "public",
        "table": "t",
        "txId": 735,
        "lsn": 0x16B3748,
        "xmin": None,
        "origin": None,
        "origin_lsn": None,
    }
    assert event.rendering is not None and event.rendering.key == b'{"id":1}'
    assert event.id == "00000000016B3748/0000000003"  # the id stays walrelay's


def test_update_under_default_identity_has_no_before() -> None:
    value, _ = render(PLAIN, Change(op="update", relation=PLAIN, new=(b"1", b"b", b"2")))
    assert (value["op"], value["before"], value["after"]["v"]) == ("u", None, "b")


def test_update_under_full_identity_has_the_old_row() -> None:
    change = Change(
        op="update", relation=PLAIN, new=(b"1", b"b", b"5"), old=(b"1", b"a", b"2"), old_kind="O"
    )
    value, event = render(PLAIN, change)
    assert value["before"] == {"id": 1, "v": "a", "n": 2}
    assert value["after"] == {"id": 1, "v": "b", "n": 5}
    assert event.rendering is not None and event.rendering.old_key is None


def test_key_changing_update_is_one_u_with_the_old_key_in_before() -> None:
    change = Change(
        op="update", relation=PLAIN, new=(b"10", b"a", b"2"), old=(b"2", None, None), old_kind="K"
    )
    value, event = render(PLAIN, change)
    assert value["op"] == "u"
    assert value["before"] == {"id": 2, "v": None, "n": None}
    assert event.rendering is not None
    assert (event.rendering.key, event.rendering.old_key) == (b'{"id":10}', b'{"id":2}')


def test_delete_under_default_identity_fills_other_columns_with_null() -> None:
    change = Change(op="delete", relation=PLAIN, old=(b"2", None, None), old_kind="K")
    value, event = render(PLAIN, change)
    assert (value["op"], value["after"]) == ("d", None)
    assert value["before"] == {"id": 2, "v": None, "n": None}
    assert event.rendering is not None and event.rendering.key == b'{"id":2}'


def test_unchanged_toast_is_debeziums_placeholder() -> None:
    rel = relation(("id", 23, -1), ("big", 25, -1), ("blob", 17, -1), ("small", 23, -1))
    change = Change(op="update", relation=rel, new=(b"1", UNCHANGED_TOAST, UNCHANGED_TOAST, b"2"))
    value, _ = render(rel, change)
    placeholder = "__debezium_unavailable_value"
    assert value["after"] == {
        "id": 1,
        "big": placeholder,
        "blob": base64.b64encode(placeholder.encode()).decode(),
        "small": 2,
    }
    value, _ = render(rel, change, unavailable_value_placeholder="?")
    assert value["after"]["big"] == "?"


@pytest.mark.parametrize(
    ("snapshot", "expected"), [(SNAPSHOT_INITIAL, "true"), (SNAPSHOT_BACKFILL, "incremental")]
)
def test_snapshot_and_backfill_rows_are_r(snapshot: str, expected: str) -> None:
    value, _ = render(PLAIN, Change(op="read", relation=PLAIN, new=(b"1", b"a", b"2")), snapshot)
    assert (value["op"], value["source"]["snapshot"]) == ("r", expected)


def test_truncate_is_t_with_a_null_key() -> None:
    other = Relation(2, "public", "u", "d", ())
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(BEGIN, Change(op="truncate", relations=(PLAIN, other)), 0)
    out = formatter(builder).render(event, SNAPSHOT_NONE)
    value = orjson.loads(out.body)
    assert (value["op"], value["before"], value["after"]) == ("t", None, None)
    assert (value["source"]["schema"], value["source"]["table"]) == ("public", "t")
    assert out.rendering is not None
    assert out.rendering.key is None
    assert out.rendering.tables == ("public.t", "public.u")


@pytest.mark.parametrize(("content", "expected"), [(b"hello", "aGVsbG8="), (b"\xff\x00", "/wA=")])
def test_logical_message_is_m(content: bytes, expected: str) -> None:
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(BEGIN, Change(op="message", prefix="golden", content=content), 0)
    out = formatter(builder).render(event, SNAPSHOT_NONE)
    value = orjson.loads(out.body)
    assert list(value) == ["op", "ts_ms", "source", "transaction", "message"]
    assert value["op"] == "m"
    assert value["message"] == {"prefix": "golden", "content": expected}
    assert (value["source"]["schema"], value["source"]["table"]) == ("", "")
    assert out.rendering is not None and out.rendering.key == b'{"prefix":"golden"}'


def test_composite_key_keeps_column_order() -> None:
    rel = relation(("b", 25, -1), ("a", 23, -1), ("v", 23, -1), key=("b", "a"))
    _, event = render(rel, Change(op="insert", relation=rel, new=(b"x", b"1", b"10")))
    assert event.rendering is not None and event.rendering.key == b'{"b":"x","a":1}'


def test_converter_passes_through_what_it_cannot_read() -> None:
    options = DebeziumOptions()
    assert value_converter(1231, NUMERIC_6_2, options)("[0:1]={1.50,2}") == "[0:1]={1.50,2}"
    assert value_converter(1114, -1, options)("infinity") == "infinity"
    assert value_converter(1082, -1, options)("5874897-12-31 BC") == "5874897-12-31 BC"


# jsonb as PostgreSQL prints it: numbers a double cannot hold, 1e400 as its digits.
BIG_JSONB = (
    '{"big": 12345678901234567890123, "dec": 0.1000000000000000000000001, '
    '"exp": 1' + "0" * 400 + ', "scaled": 1.50, "arr": [18446744073709551616, 2.5]}'
)
BIG_JSON = '{"exp": 1e400, "big": 12345678901234567890123, "dec": 0.1000000000000000000000001}'


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (3802, BIG_JSONB, BIG_JSONB),
        (114, BIG_JSON, BIG_JSON),
        (3807, '{"{\\"big\\": 12345678901234567890123}"}', ['{"big": 12345678901234567890123}']),
    ],
)
def test_json_numbers_keep_every_digit(oid: int, text: str, expected: Any) -> None:
    """Debezium's json string holds the document's numbers digit for digit
    (orjson alone gives 1.2345678901234568e+22, 0.1 and refuses 1e400)."""
    assert one_value(oid, -1, text) == expected
    rel = relation(("id", 23, -1), ("v", oid, -1))
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(BEGIN, Change(op="insert", relation=rel, new=(b"1", text.encode())), 3)
    untransformed = DebeziumFormatter(
        DebeziumOptions(),
        name="golden",
        db="app",
        version="walrelay-test",
        relation=builder.relation,
        clock=lambda: NOW_NS,
        transformed=False,  # a destination without transforms: checked for json tables only
    ).render(event, SNAPSHOT_NONE)
    assert orjson.loads(untransformed.body)["after"]["v"] == expected


def test_a_cast_numbers_digits_survive_the_format() -> None:
    """A transform's exact number (``cast`` numeric -> number) in a table
    without json columns: read exactly when the destination has transforms."""
    rel = relation(("id", 23, -1), ("v", 25, -1))
    builder = EnvelopeBuilder(TypeRegistry())
    event = builder.build(BEGIN, Change(op="insert", relation=rel, new=(b"1", b"x")), 3)
    body = event.body.replace(b'"v":"x"', b'"v":12345678901234567890.123456789')
    event = dataclasses.replace(event, body=body)
    out = formatter(builder).render(event, SNAPSHOT_NONE)
    assert b'"v":12345678901234567890.123456789' in out.body
