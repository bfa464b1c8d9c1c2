"""JSON read and written back with every number exactly as it was.

walrelay's envelope carries json/jsonb columns as PostgreSQL printed them:
``12345678901234567890123``, ``0.1000000000000000000000001``, ``1e400``,
``1.50``. orjson reads numbers as 64-bit integers or doubles, so reading a
body and writing it again (the transforms, the Debezium format, the outbox
router, a worker) would turn those into ``1.2345678901234568e+22``, ``0.1``,
an error and ``1.5``.

:func:`loads` reads with orjson first and keeps that result when writing it
back gives every number token as it was. Telling is cheap in the common
case: the result written again by orjson equals the text (walrelay's own
compact bodies), or does once whitespace is deleted from both (jsonb's text
is spaced) -- deleting whitespace changes no number token, so equal texts
have equal numbers. Otherwise one
regular-expression pass finds the number tokens orjson might not give back
as written (integers of 19 or more digits, tokens with a fraction or an
exponent; it errs on the side of checking a token-like run inside a string)
and checks each (an integer within 64 bits, a float whose shortest text is
the token). Only when one would change is the text read again by the
standard library, integers as Python ints and the numbers a double would
change as :class:`JsonNumber`, which :func:`dumps` (and
:func:`walrelay.pipeline.envelope.encode_json`) write back as their token.

What a reader of the parsed value sees: an int for every integer (beyond 64
bits too), a float for a number whose double's shortest text is the token,
a :class:`JsonNumber` (a :class:`decimal.Decimal`) for the others
(``0.1000000000000000000000001``, ``1e400``, ``1.50``). CEL sees a
JsonNumber and an integer beyond 64 bits as a double (comparisons work, on
the nearest double; ``1e400`` is infinity); the value sent stays exact.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, Final

import orjson

__all__ = ["JSON_TYPE_OIDS", "JsonNumber", "dumps", "exact_default", "loads"]

JSON_TYPE_OIDS: Final = frozenset({114, 3802, 199, 3807})
"""json, jsonb and their arrays: the only columns whose values in walrelay's
envelope can hold a number orjson would not read back as written (integers
are exact, floats are printed shortest, numerics travel as strings)."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_WHITESPACE: Final = b" \t\n\r"

# A number token orjson may not give back as written: after ``:``, ``,`` or
# ``[`` (and spaces), 19+ digits or a fraction or an exponent, ending where a
# JSON value ends. (Integers of up to 18 digits always fit in 64 bits.)
_SUSPECT: Final = re.compile(
    rb"[:,\[]\s*(-?(?:\d{19,}|\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+))(?=\s*[,\]}])"
)


class JsonNumber(Decimal):
    """A JSON number a double cannot hold as written; ``text`` is its token.

    It is a :class:`~decimal.Decimal` (exact arithmetic and comparisons) that
    :func:`dumps` writes back as ``text``, digit for digit.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonNumber:
        self = Decimal.__new__(cls, text)
        self.text = text
        return self

    def __repr__(self) -> str:
        return f"JsonNumber({self.text!r})"


def _exact(data: bytes | str, value: Any, again: bytes | None = None) -> bool:
    """Whether ``value``, orjson's reading of ``data``, gives every number back
    as written (``again``: ``value`` written by orjson, when already made)."""
    raw = data.encode() if isinstance(data, str) else data
    if again is None:
        again = orjson.dumps(value)
    if again == raw:
        return True
    # Without whitespace (jsonb's ", " and ": ", spaces in strings): deleting
    # it changes no number token, so equal texts have equal numbers.
    stripped = raw.translate(None, _WHITESPACE)
    if stripped == again or stripped == again.translate(None, _WHITESPACE):
        return True
    for match in _SUSPECT.finditer(raw):
        token = match.group(1)
        if b"." in token or b"e" in token or b"E" in token:
            if orjson.dumps(float(token)) != token:
                return False
        elif not _INT_MIN <= int(token) <= _INT_MAX:
            return False
    return True


def _lossless(data: bytes | str) -> Any:
    return json.loads(data, parse_float=_float, parse_constant=_no_constant)


def _float(token: str) -> float | JsonNumber:
    """A float when the double's shortest text is the token, else the token."""
    number = float(token)
    if number - number == 0.0 and orjson.dumps(number) == token.encode():
        return number
    return JsonNumber(token)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """``data`` parsed, every number exact (module docstring). Raises
    :class:`orjson.JSONDecodeError` (a ValueError) for text that is not JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses numbers beyond a double (1e400); anything else is not JSON.
        try:
            return _lossless(data)
        except ValueError:
            raise orjson.JSONDecodeError("not JSON", str(data), 0) from None
    if type(value) is dict or type(value) is list:
        again = orjson.dumps(value)
        if again == data:
            return value  # walrelay's own compact bodies: the common case
        return value if _exact(data, value, again) else _lossless(data)
    if isinstance(value, float | int) and not isinstance(value, bool):
        return _lossless(data)  # a bare number: read it exactly
    return value


def exact_default(value: Any) -> Any:
    """orjson ``default=`` for :class:`JsonNumber` (its token, as raw JSON)."""
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _big_ints(value: Any) -> Any:
    """Integers beyond 64 bits as raw JSON (orjson refuses them)."""
    if isinstance(value, dict):
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return orjson.Fragment(str(value))
    return value


def dumps(value: Any, option: int | None = None) -> bytes:
    """``value`` as JSON (orjson), JsonNumbers and integers beyond 64 bits as written."""
    try:
        return orjson.dumps(value, default=exact_default, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(_big_ints(value), default=exact_default, option=option)
