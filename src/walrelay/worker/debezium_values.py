"""Column values of a Debezium change event -> the values of walrelay's envelope.

Debezium's PostgreSQL connector writes some types in an encoding of their own
(``connectors/postgresql.adoc``, "Data type mappings"); with JsonConverter's
``schemas.enable=true`` every field carries its Kafka Connect schema, whose
``name`` says which encoding it is. Each is turned back into the form
walrelay's envelope uses (:mod:`walrelay.pipeline.envelope`), the form
``jsonb_populate_record`` and PostgreSQL's casts read back:

=========================================  ==========================================
schema name (Connect type)                 envelope value
=========================================  ==========================================
``org.apache.kafka.connect.data.Decimal``  ``"123.450"`` (every digit, ``scale`` decimals)
(bytes, base64 big-endian unscaled)
``io.debezium.data.VariableScaleDecimal``  ``"1.2345678901"``
(struct ``scale``, ``value``)
``io.debezium.time.Date``,                 ``"2024-02-29"``
``org.apache.kafka.connect.data.Date``
(int32 days since 1970-01-01)
``io.debezium.time.Time`` (ms),            ``"13:14:15.123456"``
``MicroTime`` (µs), ``NanoTime`` (ns),
``org.apache.kafka.connect.data.Time``
``io.debezium.time.Timestamp`` (ms),       ``"2024-01-02T03:04:05.123456"``
``MicroTimestamp``, ``NanoTimestamp``,
``org.apache.kafka.connect.data.Timestamp``
``io.debezium.time.ZonedTimestamp``        ``"2024-01-02T01:04:05.123456+00:00"``
``io.debezium.time.ZonedTime``             ``"07:44:15.5+00:00"`` (UTC: Debezium keeps no offset)
``io.debezium.time.MicroDuration`` (µs)    ``"PT273906.5S"`` (a month was 365.25/12 days)
``io.debezium.data.Json``                  the document itself (every number as written)
``io.debezium.data.Bits`` (little-endian)  ``"1010000011"`` (``length`` bits)
bytes without a name (bytea)               ``"\\x00ff"``
``io.debezium.data.geometry.Point``        ``"(1.5,-2)"``
arrays                                     element by element
=========================================  ==========================================

Everything else (integers, floats, booleans, text, uuid, enum, xml, inet,
ranges, ``Iso*`` strings) already is the envelope's value. Without a schema
(``schemas.enable=false``) nothing says which encoding a value is in, so
values are passed as they are (README "Debezium topics").
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import orjson

from walrelay import exact_json

__all__ = ["UNAVAILABLE", "Schema", "is_unavailable", "row_converter", "value_converter"]

Schema = Mapping[str, Any]
Converter = Callable[[Any], Any]

UNAVAILABLE: Final = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder``: a TOASTed column an
UPDATE did not change (bytea: these bytes, base64)."""
_UNAVAILABLE_B64: Final = base64.b64encode(UNAVAILABLE.encode()).decode()
_UNAVAILABLE_LIST: Final = [UNAVAILABLE]
_UNAVAILABLE_INTS: Final = list(UNAVAILABLE.encode())

_EPOCH_DATE: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1)
_DAY_US: Final = 86_400_000_000

# A unit as (numerator, denominator) of microseconds: exact integer arithmetic.
Fraction_t = tuple[int, int]


def _identity(value: Any) -> Any:
    return value


def _unscaled(data: str) -> int:
    return int.from_bytes(base64.b64decode(data), "big", signed=True)


def _decimal_text(unscaled: int, scale: int) -> str:
    """``unscaled * 10**-scale`` with exactly ``scale`` decimals (PostgreSQL's
    numeric text), on the digits' text: every digit, whatever their number."""
    if scale <= 0:
        return str(unscaled * 10**-scale)
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def _decimal(scale: int) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # decimal.handling.mode string/double: already a number's text
        try:
            return _decimal_text(_unscaled(value), scale)
        except ValueError:
            return value

    return convert


def _variable_decimal(value: Any) -> Any:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        return value
    try:
        return _decimal_text(_unscaled(value["value"]), int(value.get("scale") or 0))
    except ValueError:
        return value


def _date(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    try:
        return (_EPOCH_DATE + timedelta(days=value)).isoformat()
    except OverflowError:  # beyond Python's years 1-9999
        return value


def _time(unit_us: Fraction_t) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return value
        micros = value * unit_us[0] // unit_us[1]
        if micros == _DAY_US:
            return "24:00:00"
        if not 0 <= micros < _DAY_US:
            return value
        seconds, fraction = divmod(micros, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return time(hour, minute, second, fraction).isoformat()

    return convert


def _timestamp(unit_us: Fraction_t) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return value
        try:
            return (_EPOCH + timedelta(microseconds=value * unit_us[0] // unit_us[1])).isoformat()
        except OverflowError:
            return value

    return convert


_MS: Final = (1000, 1)
_US: Final = (1, 1)
_NS: Final = (1, 1000)


def _zoned_timestamp(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return value  # infinity and the like: PostgreSQL's own text


def _zoned_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return time.fromisoformat(value).isoformat()
    except ValueError:
        return value


def _duration(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    seconds = _decimal_text(value, 6).rstrip("0").removesuffix(".")
    return f"PT{seconds}S"


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return exact_json.loads(value)
    except ValueError:
        return value


def _bits(length: int | None) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            number = int.from_bytes(base64.b64decode(value), "little")
        except ValueError:
            return value
        text = bin(number)[2:]
        return text.zfill(length) if length is not None else text

    return convert


def _bytea(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return "\\x" + base64.b64decode(value, validate=True).hex()
    except ValueError:
        return value  # binary.handling.mode hex/base64 gave a string schema anyway


def _number_text(x: Any) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _point(value: Any) -> Any:
    if not isinstance(value, dict) or "x" not in value or "y" not in value:
        return value
    return f"({_number_text(value['x'])},{_number_text(value['y'])})"


_BY_NAME: Final[dict[str, Converter]] = {
    "io.debezium.data.VariableScaleDecimal": _variable_decimal,
    "io.debezium.time.Date": _date,
    "org.apache.kafka.connect.data.Date": _date,
    "io.debezium.time.Time": _time(_MS),
    "org.apache.kafka.connect.data.Time": _time(_MS),
    "io.debezium.time.MicroTime": _time(_US),
    "io.debezium.time.NanoTime": _time(_NS),
    "io.debezium.time.Timestamp": _timestamp(_MS),
    "org.apache.kafka.connect.data.Timestamp": _timestamp(_MS),
    "io.debezium.time.MicroTimestamp": _timestamp(_US),
    "io.debezium.time.NanoTimestamp": _timestamp(_NS),
    "io.debezium.time.ZonedTimestamp": _zoned_timestamp,
    "io.debezium.time.ZonedTime": _zoned_time,
    "io.debezium.time.MicroDuration": _duration,
    "io.debezium.data.Json": _json,
    "io.debezium.data.geometry.Point": _point,
}


def value_converter(schema: Schema | None) -> Converter:
    """The converter of one field's Connect schema (``None``: no schema, values as they are)."""
    if not isinstance(schema, dict):
        return _identity
    name = schema.get("name")
    kind = schema.get("type")
    if name == "org.apache.kafka.connect.data.Decimal":
        params = schema.get("parameters") or {}
        return _decimal(int(params.get("scale", 0)))
    if name == "io.debezium.data.Bits":
        length = (schema.get("parameters") or {}).get("length")
        return _bits(int(length) if length is not None else None)
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    if kind == "bytes":
        return _bytea
    if kind == "array":
        inner = value_converter(schema.get("items"))
        if inner is _identity:
            return _identity
        return lambda value: _map_array(value, inner)
    return _identity


def _map_array(value: Any, inner: Converter) -> Any:
    if not isinstance(value, list):
        return value
    return [
        None if v is None else _map_array(v, inner) if isinstance(v, list) else inner(v)
        for v in value
    ]


def is_unavailable(value: Any, schema: Schema | None) -> bool:
    """Whether ``value`` is Debezium's placeholder for an unchanged TOASTed column
    (an array's: the text in a list; an integer array's: its bytes, as Debezium
    up to 2.x writes it)."""
    kind = type(value)
    if kind is str:
        return value == UNAVAILABLE or (value == _UNAVAILABLE_B64 and _is_bytea(schema))
    if kind is list:
        return value in (_UNAVAILABLE_LIST, _UNAVAILABLE_INTS)
    return False


def _is_bytea(schema: Schema | None) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "bytes" and not schema.get("name")


RowConverter = Callable[[Mapping[str, Any]], tuple[dict[str, Any], list[str]]]


_CONVERTERS: dict[bytes, RowConverter] = {}
_MAX_CONVERTERS: Final = 512


def row_converter(struct: Schema | None) -> RowConverter:
    """A row (``before``/``after``/the key) -> (envelope row, unchanged TOAST columns).

    ``struct`` is the row's Connect struct schema, or None (no schema). Every
    record repeats its schema: converters are kept by the schema's text (a
    table's schema changes only with its columns)."""
    if not isinstance(struct, dict):
        return _build(None)
    text = orjson.dumps(struct)
    found = _CONVERTERS.get(text)
    if found is None:
        if len(_CONVERTERS) >= _MAX_CONVERTERS:
            _CONVERTERS.clear()
        found = _CONVERTERS[text] = _build(struct)
    return found


def _build(struct: Schema | None) -> RowConverter:
    fields: dict[str, tuple[Converter, Schema | None]] = {}
    if isinstance(struct, dict):
        for field in struct.get("fields") or ():
            if isinstance(field, dict) and isinstance(field.get("field"), str):
                fields[field["field"]] = (value_converter(field), field)

    plain = (_identity, None)

    def convert(row: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        out: dict[str, Any] = {}
        unchanged: list[str] = []
        for column, value in row.items():
            kind = type(value)
            if value is None or kind is int or kind is bool or kind is float:
                out[column] = value if kind is not int else fields.get(column, plain)[0](value)
                continue
            conv, schema = fields.get(column, plain)
            if is_unavailable(value, schema):
                unchanged.append(column)
            else:
                out[column] = conv(value)
        return out, unchanged

    return convert
