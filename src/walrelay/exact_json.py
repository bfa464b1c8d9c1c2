"""JSON read and written back with every number exactly as it was.

walrelay's envelope carries json/jsonb columns as PostgreSQL printed them:
``12345678901234567890123``, ``0.1000000000000000000000001``, ``1e400``,
``1.50``. orjson reads numbers as 64-bit integers or doubles, so reading a
body and writing it again (the transforms, the Debezium format, the outbox
router, a worker) would turn those into ``1.2345678901234568e+22``, ``0.1``,
an error and ``1.5``.

:func:`loads` reads with orjson first and keeps that result when writing it
back gives the text again, up to whitespace (walrelay's own compact bodies,
jsonb's spaced text): deleting whitespace changes no number token and no
key, so equal texts hold the same numbers and pairs. Otherwise the text is
read again by the standard library, integers as Python ints, the numbers a
double would change as :class:`JsonNumber` (which :func:`dumps` and
:func:`walrelay.pipeline.envelope.encode_json` write back as their token),
and an object that gives a key twice (a ``json`` column keeps both) as a
:class:`JsonObject`, written back with every pair.

What a reader of the parsed value sees: an int for every integer (beyond 64
bits too), a float for a number whose double's shortest text is the token,
a :class:`JsonNumber` (a :class:`decimal.Decimal`) for the others
(``0.1000000000000000000000001``, ``1e400``, ``1.50``). CEL sees a
JsonNumber and an integer beyond 64 bits as a double (comparisons work, on
the nearest double; ``1e400`` is infinity); the value sent stays exact.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Final

import orjson

__all__ = [
    "JSON_TYPE_OIDS",
    "JsonNumber",
    "JsonObject",
    "as_base_type",
    "dumps",
    "exact_default",
    "loads",
    "object_text",
]

JSON_TYPE_OIDS: Final = frozenset({114, 3802, 199, 3807})
"""json, jsonb and their arrays: the only columns whose values in walrelay's
envelope can hold a number orjson would not read back as written (integers
are exact, floats are printed shortest, numerics travel as strings)."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_WHITESPACE: Final = b" \t\n\r"


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


def _same_text(data: bytes | str, again: bytes) -> bool:
    """Whether ``again`` (orjson's reading of ``data`` written again) is ``data``
    up to whitespace: deleting it changes no number token and no key, so equal
    texts hold the same numbers and the same pairs."""
    raw = data.encode() if isinstance(data, str) else data
    stripped = raw.translate(None, _WHITESPACE)
    return stripped == again or stripped == again.translate(None, _WHITESPACE)


class JsonObject(dict[str, Any]):
    """A JSON object that gives a key more than once (a ``json`` column keeps
    them; ``jsonb`` does not). As a dict it holds each key's last value, as
    ``::jsonb`` would; its ``items()`` are every pair, in order, and
    :func:`dumps`, :func:`exact_default` and the standard library's ``json``
    write them all back."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """Every pair, in order (what the standard library's ``json`` writes)."""
        return self.pairs

    def __repr__(self) -> str:
        return f"JsonObject({self.pairs!r})"


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    return value if len(value) == len(pairs) else JsonObject(pairs)


def _lossless(data: bytes | str) -> Any:
    return json.loads(
        data, parse_float=_float, parse_constant=_no_constant, object_pairs_hook=_object
    )


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
        if again == data or _same_text(data, again):
            return value  # walrelay's own compact bodies, jsonb's spaced text
        # A number orjson did not read as written, a key given twice, an escape
        # written differently: read again, exactly.
        return _lossless(data)
    if isinstance(value, float | int) and not isinstance(value, bool):
        return _lossless(data)  # a bare number: read it exactly
    return value


def exact_default(value: Any) -> Any:
    """orjson ``default=`` (with ``OPT_PASSTHROUGH_SUBCLASS``) for
    :class:`JsonNumber` (its token) and :class:`JsonObject` (every pair), as raw
    JSON; any other subclass of a JSON type as that type."""
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    if isinstance(value, JsonObject):
        return orjson.Fragment(object_text(value, exact_default))
    return as_base_type(value)


def as_base_type(value: Any) -> Any:
    """A subclass of a JSON type (which ``OPT_PASSTHROUGH_SUBCLASS`` hands to
    ``default=``) as that type; TypeError for anything else."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def object_text(value: JsonObject, default: Any) -> bytes:
    """``value``'s pairs as one JSON object (``default``: orjson's, for the values)."""
    dump = orjson.dumps
    items = (
        dump(k) + b":" + dump(v, default=default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
        for k, v in value.pairs
    )
    return b"{" + b",".join(items) + b"}"


def _big_ints(value: Any) -> Any:
    """Integers beyond 64 bits as raw JSON (orjson refuses them)."""
    if isinstance(value, JsonObject):
        return JsonObject([(k, _big_ints(v)) for k, v in value.pairs])
    if isinstance(value, dict):
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return orjson.Fragment(str(value))
    return value


def dumps(value: Any, option: int | None = None) -> bytes:
    """``value`` as JSON (orjson), JsonNumbers and integers beyond 64 bits as written."""
    flags = orjson.OPT_PASSTHROUGH_SUBCLASS | (option or 0)
    try:
        return orjson.dumps(value, default=exact_default, option=flags)
    except orjson.JSONEncodeError:
        return orjson.dumps(_big_ints(value), default=exact_default, option=flags)
