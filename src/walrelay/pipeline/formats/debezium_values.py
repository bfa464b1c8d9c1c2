"""Column values as Debezium's PostgreSQL connector writes them through JsonConverter.

Each converter takes a value of walrelay's envelope (already JSON: numeric as a
string with every digit, timestamps as ISO 8601, bytea as ``"\\x.."``...) and
returns the value Debezium would emit with ``schemas.enable=false``, for the
column's type OID and type modifier. The defaults are Debezium's
(``decimal.handling.mode=precise``, ``time.precision.mode=adaptive``,
``binary.handling.mode=bytes``, ``interval.handling.mode=numeric``); checked
field for field against real Debezium by tests/integration/test_formats_golden.py.

Values the envelope carries as PostgreSQL's text because Python cannot hold
them (``infinity`` timestamps, BC dates) are passed on as that text.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final

from psycopg.postgres import types as _pg_types

from walrelay.exact_json import JsonNumber
from walrelay.format_config import DebeziumOptions

__all__ = [
    "UNSUPPORTED_OIDS",
    "ValueConverter",
    "interval_micros",
    "value_converter",
]

ValueConverter = Callable[[Any], Any]

# Types the connector does not know (include.unknown.datatypes=false): Debezium
# leaves such columns out of before/after; so does the debezium format.
# lseg, path, box, polygon, line, circle.
UNSUPPORTED_OIDS: Final = frozenset({601, 602, 603, 604, 628, 718})

_ELEMENT_OF: Final = {t.array_oid: t.oid for t in _pg_types if t.array_oid}
_EPOCH_DATE: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1)
_DAYS_PER_MONTH: Final = Fraction(36525, 1200)  # Debezium's 365.25 / 12
_DAY_US: Final = 86_400_000_000

_BOOL, _BIT, _VARBIT = 16, 1560, 1562
_BYTEA, _NUMERIC, _MONEY = 17, 1700, 790
_DATE, _TIME, _TIMETZ, _TS, _TSTZ, _INTERVAL = 1082, 1083, 1266, 1114, 1184, 1186
_JSON, _JSONB, _POINT = 114, 3802, 600


def value_converter(oid: int, typmod: int, options: DebeziumOptions) -> ValueConverter:
    """The converter of one column (``None`` stays ``None``, arrays element-wise)."""
    element = _ELEMENT_OF.get(oid)
    if element is not None:
        inner = _scalar(element, typmod, options)
        if inner is None:
            return _identity
        # An array the envelope carries as text (non-default bounds) stays text.
        return lambda value: _map_array(value, inner) if isinstance(value, list) else value
    conv = _scalar(oid, typmod, options)
    return _identity if conv is None else conv


def _identity(value: Any) -> Any:
    return value


def _map_array(value: Any, conv: ValueConverter) -> Any:
    if isinstance(value, list):
        return [_map_array(v, conv) for v in value]
    return None if value is None else conv(value)


def _scalar(oid: int, typmod: int, options: DebeziumOptions) -> ValueConverter | None:
    """None: the envelope's value already is Debezium's (ints, text, uuid, ranges...)."""
    if oid == _BIT:
        return _bit1 if typmod == 1 else _bits(typmod)
    if oid == _VARBIT:
        return _bits(None)
    if oid == _BYTEA:
        return _bytea(options.binary_handling)
    if oid == _NUMERIC:
        scale = ((typmod - 4) & 0xFFFF) if typmod >= 4 else None
        return _decimal(options.decimal_handling, scale)
    if oid == _MONEY:
        return _money(options.decimal_handling)
    if oid == _DATE:
        return _date
    connect = options.time_precision == "connect"
    precision = 6 if typmod < 0 else typmod
    if oid == _TIME:
        return _time_millis if connect or precision <= 3 else _time_micros
    if oid == _TS:
        return _ts_millis if connect or precision <= 3 else _ts_micros
    if oid == _TSTZ:
        return _zoned_timestamp(precision)
    if oid == _TIMETZ:
        return _zoned_time
    if oid == _INTERVAL:
        return _interval
    if oid in (_JSON, _JSONB):
        return _json_text
    if oid == _POINT:
        return _point
    return None


# -- bits, bytes, numbers ---------------------------------------------------------


def _bit1(value: Any) -> Any:
    return value == "1" if isinstance(value, str) else value


def _bits(length: int | None) -> ValueConverter:
    """Bit strings: little-endian bytes (java.util.BitSet), ceil(n/8) bytes for bit(n)."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str) or not set(value) <= {"0", "1"}:
            return value
        number = int(value, 2) if value else 0
        size = (number.bit_length() + 7) // 8
        if length is not None:
            size = max(size, (length + 7) // 8)
        return _b64(number.to_bytes(size, "little"))

    return convert


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hex_bytes(value: Any) -> bytes | None:
    if isinstance(value, str) and value.startswith("\\x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def _bytea(mode: str) -> ValueConverter:
    def convert(value: Any) -> Any:
        data = _hex_bytes(value)
        if data is None:
            return value
        return data.hex() if mode == "hex" else _b64(data)

    return convert


def _unscaled(number: Decimal, scale: int) -> str:
    """Base64 of ``number * 10**scale`` as big-endian two's complement (Kafka
    Connect's Decimal), computed on Python ints: every digit, any length."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0")
    shift = exponent + scale
    unscaled = unscaled * 10**shift if shift >= 0 else unscaled // 10**-shift
    if sign:
        unscaled = -unscaled
    size = (unscaled + (unscaled < 0)).bit_length() // 8 + 1
    return _b64(unscaled.to_bytes(size, "big", signed=True))


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _decimal(mode: str, scale: int | None) -> ValueConverter:
    def convert(value: Any) -> Any:
        number = _to_decimal(value)
        if mode == "string":
            return value if isinstance(value, str) else str(value)
        if mode == "double":
            return float(number) if number is not None else value
        if number is None:
            return None  # NaN / Infinity: Decimal has no such value
        if scale is not None:
            return _unscaled(number, scale)
        exponent = number.as_tuple().exponent
        digits = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return {"scale": digits, "value": _unscaled(number, digits)}

    return convert


_MONEY_JUNK: Final = re.compile(r"[^0-9.\-]")


def _money(mode: str) -> ValueConverter:
    """money as PostgreSQL prints it (lc_monetary C: ``-$1,234.56``); scale 2."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        negative = "-" in value or "(" in value
        number = _to_decimal(_MONEY_JUNK.sub("", value).replace("-", ""))
        if number is None:
            return value
        if negative:
            number = -number
        if mode == "string":
            return format(number, "f")
        if mode == "double":
            return float(number)
        return _unscaled(number, 2)

    return convert


# -- dates and times --------------------------------------------------------------


def _date(value: Any) -> Any:
    try:
        return (date.fromisoformat(value) - _EPOCH_DATE).days
    except (TypeError, ValueError):
        return value


def _time_of(value: Any) -> int | None:
    if value == "24:00:00":
        return _DAY_US
    try:
        t = time.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _time_micros(value: Any) -> Any:
    micros = _time_of(value)
    return value if micros is None else micros


def _time_millis(value: Any) -> Any:
    micros = _time_of(value)
    return value if micros is None else micros // 1000


def _ts_of(value: Any) -> int | None:
    try:
        at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _ts_micros(value: Any) -> Any:
    micros = _ts_of(value)
    return value if micros is None else micros


def _ts_millis(value: Any) -> Any:
    micros = _ts_of(value)
    return value if micros is None else micros // 1000


def _zoned_timestamp(precision: int) -> ValueConverter:
    """``2024-01-02T01:04:05.123456Z``: UTC, as many fraction digits as the column's precision."""

    def convert(value: Any) -> Any:
        try:
            at = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return value
        if at.tzinfo is not None:
            at = at.astimezone(UTC).replace(tzinfo=None)
        text = at.isoformat(timespec="seconds")
        if precision > 0:
            text += "." + f"{at.microsecond:06d}"[:precision].ljust(precision, "0")
        return text + "Z"

    return convert


def _zoned_time(value: Any) -> Any:
    """``07:44:15.5Z``: the time in UTC, fraction without trailing zeros."""
    try:
        t = time.fromisoformat(value)
    except (TypeError, ValueError):
        return value
    offset = t.utcoffset()
    micros = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if offset is not None:
        micros -= (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    micros %= _DAY_US
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + "Z"


_ISO_DURATION: Final = re.compile(
    r"^(?P<sign>-)?P(?:(?P<y>[-+]?\d+)Y)?(?:(?P<mo>[-+]?\d+)M)?(?:(?P<w>[-+]?\d+)W)?"
    r"(?:(?P<d>[-+]?\d+)D)?(?:T(?:(?P<h>[-+]?\d+)H)?(?:(?P<mi>[-+]?\d+)M)?"
    r"(?:(?P<s>[-+]?\d+(?:\.\d+)?)S)?)?$"
)


def interval_micros(text: str) -> int | None:
    """An ISO 8601 duration (``P1Y2M3DT4H5M6.5S``, components may carry their own
    sign as PostgreSQL's ``IntervalStyle=iso_8601`` writes them) -> Debezium's
    MicroDuration: microseconds, a month being 365.25/12 days."""
    match = _ISO_DURATION.match(text)
    if match is None or text in ("P", "-P", "PT"):
        return None
    part = match.group
    months = int(part("y") or 0) * 12 + int(part("mo") or 0)
    days = int(part("w") or 0) * 7 + int(part("d") or 0)
    seconds = Fraction(int(part("h") or 0) * 3600 + int(part("mi") or 0) * 60)
    seconds += Fraction(Decimal(part("s") or 0))
    total = (months * _DAYS_PER_MONTH + days) * _DAY_US + seconds * 1_000_000
    micros = int(total)  # toward zero, as Java's (long) cast
    return -micros if part("sign") else micros


def _interval(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    micros = interval_micros(value)
    return value if micros is None else micros


# -- documents and geometry -------------------------------------------------------


def _json_text(value: Any) -> Any:
    """json/jsonb: the document as a string, spaced as PostgreSQL prints jsonb,
    every number as PostgreSQL printed it (integers of any size are Python
    ints; :class:`JsonNumber` tokens are written back as they were)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_json_number)
    except _HasToken:
        return _json_with_tokens(value)


class _HasToken(Exception):
    """The document holds a JsonNumber (json.dumps cannot write a raw token)."""


def _json_number(value: Any) -> Any:
    if isinstance(value, JsonNumber):
        raise _HasToken
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json_with_tokens(value: Any) -> str:
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{_json_text(str(k))}: {_json_with_tokens(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_json_with_tokens(v) for v in value) + "]"
    text: str = _json_text(value)
    return text


def _point(value: Any) -> Any:
    """``(x,y)`` -> Debezium's Point struct: x, y, WKB (little-endian), srid."""
    if not isinstance(value, str):
        return value
    try:
        x_text, y_text = value.strip().strip("()").split(",")
        x, y = float(x_text), float(y_text)
    except ValueError:
        return value
    wkb = struct.pack("<BIdd", 1, 1, x, y)
    return {"x": x, "y": y, "wkb": _b64(wkb), "srid": None}
