"""TypeRegistry against text exactly as PostgreSQL prints it under SESSION_SETTINGS.

Every input below was checked against ``psql`` output of a real server.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pytest
from psycopg import postgres
from psycopg.pq import Format

from walrelay.errors import DecodeError
from walrelay.source.types import MAX_JSON_DEPTH, NotUtf8, TypeRegistry, json_depth


def oid(name: str) -> int:
    if name.endswith("[]"):
        info = postgres.types.get(name[:-2])
        assert info is not None
        return info.array_oid
    info = postgres.types.get(name)
    assert info is not None
    return info.oid


@pytest.fixture(scope="module")
def types() -> TypeRegistry:
    return TypeRegistry()


def both(types: TypeRegistry, type_name: str, text: bytes) -> Any:
    """Convert with the safe converter; the fast one must agree when it does not raise."""
    value = types.converter(oid(type_name))(text)
    try:
        fast = types.fast_converter(oid(type_name))(text)
    except Exception:
        pass  # allowed: callers redo the value with converter()
    else:
        assert shown(fast) == shown(value)
    return value


def shown(value: Any) -> str:
    """repr (NaN != NaN), or the JSON of values holding json fragments (no __eq__)."""
    text = repr(value)
    return orjson.dumps(value).decode() if "orjson.Fragment" in text else text


CASES: list[tuple[str, bytes, Any]] = [
    ("int2", b"-32768", -32768),
    ("int4", b"2147483647", 2147483647),
    ("int8", b"-9223372036854775808", -9223372036854775808),
    ("oid", b"4294967295", 4294967295),
    ("numeric", b"12345678901234567890.123456789", Decimal("12345678901234567890.123456789")),
    ("numeric", b"0.0000001", Decimal("0.0000001")),
    ("numeric", b"-1.50", Decimal("-1.50")),
    ("numeric", b"Infinity", Decimal("Infinity")),
    ("numeric", b"-Infinity", Decimal("-Infinity")),
    ("float8", b"1.1", 1.1),
    ("float4", b"1.1", 1.1),
    ("float8", b"-Infinity", float("-inf")),
    ("float8", b"1e+300", 1e300),
    ("bool", b"t", True),
    ("bool", b"f", False),
    ("text", b"caf\xc3\xa9 \xe2\x9c\x93", "café ✓"),
    ("varchar", b"x", "x"),
    ("bpchar", b"ab  ", "ab  "),
    ("name", b"pg_class", "pg_class"),
    ('"char"', b"x", "x"),
    ("timestamptz", b"2024-01-02 03:04:05.123456+00", datetime(2024, 1, 2, 3, 4, 5, 123456, UTC)),
    ("timestamptz", b"2024-01-02 08:34:05+05:30", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("timestamptz", b"2024-01-01 23:34:05-03:30", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("timestamptz", b"infinity", "infinity"),
    ("timestamptz", b"-infinity", "-infinity"),
    ("timestamptz", b"0044-03-15 10:00:00+00 BC", "0044-03-15 10:00:00+00 BC"),
    ("timestamp", b"2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5)),
    ("timestamp", b"infinity", "infinity"),
    ("timestamp", b"12024-01-02 03:04:05", "12024-01-02 03:04:05"),
    ("date", b"2024-02-29", date(2024, 2, 29)),
    ("date", b"-infinity", "-infinity"),
    ("date", b"0044-03-15 BC", "0044-03-15 BC"),
    ("time", b"03:04:05.5", time(3, 4, 5, 500000)),
    ("time", b"24:00:00", "24:00:00"),
    ("timetz", b"03:04:05+05:30", time(3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
    # IntervalStyle=iso_8601 (SESSION_SETTINGS): months, days and time kept apart
    ("interval", b"P1Y2M3DT4H5M6.789S", "P1Y2M3DT4H5M6.789S"),
    ("interval", b"P-1Y-2M3DT-4H", "P-1Y-2M3DT-4H"),
    ("interval", b"P-178000000Y", "P-178000000Y"),
    ("interval", b"PT0S", "PT0S"),
    ("interval", b"infinity", "infinity"),  # PostgreSQL 17
    ("interval", b"-infinity", "-infinity"),
    ("uuid", b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("bytea", b"\\x00ff", b"\x00\xff"),
    ("bytea", b"\\x", b""),
    ("inet", b"10.0.0.1/8", "10.0.0.1/8"),
    ("inet", b"::1", "::1"),
    ("cidr", b"10.0.0.0/8", "10.0.0.0/8"),
    ("money", b"$1,000.50", "$1,000.50"),
    ("int4range", b"[1,5)", "[1,5)"),
    ("tstzrange", b'["2024-01-02 03:04:05+00",infinity)', '["2024-01-02 03:04:05+00",infinity)'),
    ("int4multirange", b"{[1,5),[7,9)}", "{[1,5),[7,9)}"),
    ("xml", b"<a>1</a>", "<a>1</a>"),
    ("pg_lsn", b"0/16B3748", "0/16B3748"),
    # arrays
    ("int4[]", b"{1,2,NULL}", [1, 2, None]),
    ("int4[]", b"{{1,2},{3,4}}", [[1, 2], [3, 4]]),
    ("int4[]", b"{}", []),
    ("text[]", b'{a,"b c",NULL,"NULL","x\\"y"}', ["a", "b c", None, "NULL", 'x"y']),
    ("numeric[]", b"{1.5,NaN}", None),  # checked separately (NaN != NaN)
    ("float8[]", b"{1.5,NaN,-Infinity}", None),
    ("bool[]", b"{t,f}", [True, False]),
    ("interval[]", b"{P1M,PT25H,NULL}", ["P1M", "PT25H", None]),
    # lower bounds other than 1: PostgreSQL's text, bounds kept
    ("int4[]", b"[0:2]={7,8,9}", "[0:2]={7,8,9}"),
    ("text[]", b"[-1:0][2:2]={{a},{b}}", "[-1:0][2:2]={{a},{b}}"),
    ("bytea[]", b'{"\\\\x00ff"}', [b"\x00\xff"]),
    (
        "uuid[]",
        b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        [UUID(int=0xA0EEBC999C0B4EF8BB6D6BB9BD380A11)],
    ),
    ("date[]", b"{2024-01-02,infinity}", [date(2024, 1, 2), "infinity"]),
    (
        "timestamptz[]",
        b'{"2024-01-02 03:04:05+00",infinity,NULL}',
        [datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "infinity", None],
    ),
    ("inet[]", b"{10.0.0.1,::1/128}", ["10.0.0.1", "::1/128"]),
    ("money[]", b'{"$1.00"}', ["$1.00"]),
    ("int4range[]", b'{"[1,5)",empty}', ["[1,5)", "empty"]),
]


@pytest.mark.parametrize(("type_name", "text", "expected"), CASES)
def test_builtin_types(types: TypeRegistry, type_name: str, text: bytes, expected: Any) -> None:
    value = both(types, type_name, text)
    if expected is None:
        return
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, datetime | time):
        assert value.utcoffset() == expected.utcoffset()


def test_nan_values(types: TypeRegistry) -> None:
    nan = both(types, "numeric", b"NaN")
    assert isinstance(nan, Decimal) and nan.is_nan()
    f = both(types, "float8", b"NaN")
    assert isinstance(f, float) and f != f
    num = both(types, "numeric[]", b"{1.5,NaN}")
    assert num[0] == Decimal("1.5") and num[1].is_nan()
    fl = both(types, "float8[]", b"{1.5,NaN,-Infinity}")
    assert fl[0] == 1.5 and fl[1] != fl[1] and fl[2] == float("-inf")


def test_numeric_keeps_every_digit(types: TypeRegistry) -> None:
    value = types.converter(oid("numeric"))(b"12345678901234567890.123456789")
    assert str(value) == "12345678901234567890.123456789"
    assert format(types.converter(oid("numeric"))(b"0.0000001"), "f") == "0.0000001"


def test_timestamptz_is_aware_utc(types: TypeRegistry) -> None:
    value = types.converter(oid("timestamptz"))(b"2024-01-02 08:34:05+05:30")
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert value.isoformat() == "2024-01-02T03:04:05+00:00"


@pytest.mark.parametrize(
    ("type_name", "text", "expected"),
    [
        ("jsonb", b'{"a": 1, "b": [1, 2]}', b'{"a": 1, "b": [1, 2]}'),
        ("json", b'{"a":1,  "a":2}', b'{"a":1,  "a":2}'),  # json keeps duplicates
        ("json", b'{\r\n"a": 1\n}', b'{  "a": 1 }'),  # an event stays one line
        ("jsonb", b'"just a string"', b'"just a string"'),
        ("jsonb", b"null", b"null"),
        # every digit, also beyond 64-bit integers and doubles
        ("jsonb", b"123456789012345678901234567890", b"123456789012345678901234567890"),
        ("jsonb", b'{"x": 1e400, "y": 0.1000000000000000000001}', None),
        ("jsonb[]", b'{"{\\"a\\": 1}","[1, 2]",NULL}', b'[{"a": 1},[1, 2],null]'),
    ],
)
def test_json_is_its_own_text(
    types: TypeRegistry, type_name: str, text: bytes, expected: bytes | None
) -> None:
    value = both(types, type_name, text)
    assert orjson.dumps(value) == (text if expected is None else expected)


@pytest.mark.parametrize("depth", [300, 500, 501, 5000])
def test_deep_json_becomes_its_text(types: TypeRegistry, depth: int) -> None:
    doc = b'{"a": ' * depth + b'"[{"' + b"}" * depth
    value = both(types, "jsonb", doc)
    if depth <= MAX_JSON_DEPTH:
        assert orjson.dumps(value) == doc
    else:
        assert value == doc.decode()
    assert json_depth(doc) == depth


def test_json_depth_skips_strings() -> None:
    assert json_depth(b'[["\\"[[[", "]"], {}]') == 2
    assert json_depth(b"1") == 0


def test_unknown_oids_are_text(types: TypeRegistry) -> None:
    assert types.converter(987654)(b"happy") == "happy"
    assert types.fast_converter(987654)(b'(1,"a b")') == '(1,"a b")'
    assert types.type_name(987654) == "oid 987654"
    assert types.type_name(oid("int4")) == "int4"
    assert types.type_name(oid("int4[]")) == "int4[]"


def test_convert_keeps_null(types: TypeRegistry) -> None:
    assert types.convert(oid("int4"), None) is None
    assert types.convert(oid("int4"), b"7") == 7


def test_converters_are_cached(types: TypeRegistry) -> None:
    assert types.converter(oid("int8")) is types.converter(oid("int8"))
    assert types.fast_converter(oid("int8")) is types.fast_converter(oid("int8"))


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("int4", b"not a number"),
        ("uuid", b"nope"),
        ("date", b"01/02/2024"),  # DateStyle is not ISO
        ("timestamptz", b"Tue Jan 02 03:04:05 2024 UTC"),  # DateStyle=Postgres
    ],
)
def test_rejected_values_raise_decode_error(
    types: TypeRegistry, type_name: str, text: bytes
) -> None:
    with pytest.raises(DecodeError) as info:
        types.converter(oid(type_name))(text)
    assert type_name in str(info.value)
    assert f"oid {oid(type_name)}" in str(info.value)


def test_register_custom_types() -> None:
    types = TypeRegistry()
    int4, ts = oid("int4"), oid("timestamptz")
    enum_arr_before = types.converter(80001)
    version = types.version
    types.register(80000, "mood")  # enum, as a pgoutput Type message announces it
    types.register(80001, "_mood", element_oid=80000)
    types.register(80002, "posint", base_oid=int4)  # domain
    types.register(80003, "_posint", element_oid=80002)
    types.register(80004, "event_time", base_oid=ts)
    assert types.version > version
    assert enum_arr_before(b"{sad,ok}") == "{sad,ok}"  # before: unknown -> text
    assert types.converter(80000)(b"sad") == "sad"
    assert types.converter(80001)(b'{sad,"very happy",NULL}') == ["sad", "very happy", None]
    assert types.converter(80002)(b"42") == 42
    assert types.converter(80003)(b"{1,NULL}") == [1, None]
    assert types.converter(80004)(b"infinity") == "infinity"
    assert types.converter(80004)(b"2024-01-02 03:04:05+00") == datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert types.type_name(80001) == "_mood"
    with pytest.raises(DecodeError, match=r"posint \(oid 80002\)"):
        types.converter(80002)(b"x")
    with pytest.raises(ValueError):
        types.register(80005, "bad", base_oid=int4, element_oid=int4)


def test_registries_are_independent() -> None:
    a, b = TypeRegistry(), TypeRegistry()
    a.register(81000, "cents", base_oid=oid("int8"))
    assert a.converter(81000)(b"5") == 5
    assert b.converter(81000)(b"5") == "5"


def test_global_psycopg_adapters_untouched() -> None:
    TypeRegistry()
    from psycopg.types.json import JsonbLoader

    loader = postgres.adapters.get_loader(oid("jsonb"), Format.TEXT)
    assert loader is not None and issubclass(loader, JsonbLoader)
    inet = postgres.adapters.get_loader(oid("inet"), Format.TEXT)
    assert inet is not None and inet.__name__ == "InetLoader"


@pytest.mark.parametrize(
    "type_name", ["text", "varchar", "json", "jsonb", "text[]", "int4", "mood"]
)
def test_bytes_that_are_not_utf8_become_hex_of_any_type(
    types: TypeRegistry, type_name: str
) -> None:
    """Only a SQL_ASCII database sends them (the server converts every other
    encoding to the session's UTF-8): never a DecodeError, which would stop the
    slot at that change for good."""
    type_oid = 99999 if type_name == "mood" else oid(type_name)
    value = types.converter(type_oid)(b"a\xfe\xff")
    assert value == "\\x61feff"
    assert isinstance(value, NotUtf8)
