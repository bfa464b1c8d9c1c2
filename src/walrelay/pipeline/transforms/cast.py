"""``cast``: column values converted (numeric text -> number, timestamp -> epoch ms, ...).

walrelay sends numerics as strings (every digit) and timestamps as ISO 8601
text; a consumer that wants numbers asks for them here. A value that cannot
be converted fails the event (it is parked with the column named), never
silently nulled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from walrelay.exact_json import JsonNumber
from walrelay.pipeline.envelope import encode_json
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed, row_dicts

__all__ = ["CastStep"]

_NONFINITE = frozenset({"nan", "inf", "infinity"})
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _number(value: Any) -> Any:
    """A JSON number with every digit of the value: an int, a float when the
        shortest text of the double is the value's text, else a :class:`JsonNumber`
        (``"12345678901234567890.5"`` -> ``12345678901234567890.5``, ``"12.50"`` ->
        ``12.50``). NaN and infinities stay the strings walrelay sends them as
    (JSON has no such number)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | JsonNumber):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    number = float(text)  # ValueError: not a number (the event is parked)
    if number - number == 0.0:
        if orjson.dumps(number) == text.encode():
            return number
    elif text.lstrip("+-").lower() in _NONFINITE:
        return value  # JSON has no NaN/Infinity (orjson would write null)
    if _JSON_NUMBER.fullmatch(text) is None:
        text = str(Decimal(text))  # ".5", "+1.5", "1_000": the same number, as JSON
    return JsonNumber(text)


def _integer(value: Any) -> int:
    if isinstance(value, str) and ("." in value or "e" in value.lower()):
        return int(Decimal(value))  # every digit; toward zero, as int(float) did
    return int(value)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else encode_json(value).decode()


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("t", "true", "1", "yes", "on"):
            return True
        if text in ("f", "false", "0", "no", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    return bool(value)


def _epoch_us(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("already a number")
    text = str(value)
    parsed: datetime
    if len(text) == 10:  # a date
        d = date.fromisoformat(text)
        parsed = datetime(d.year, d.month, d.day, tzinfo=UTC)
    else:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # timestamp without time zone: read as UTC
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _epoch_ms(value: Any) -> int:
    return _epoch_us(value) // 1000


def _epoch_s(value: Any) -> int:
    return _epoch_us(value) // 1_000_000


_CASTS: dict[str, Callable[[Any], Any]] = {
    "number": _number,
    "integer": _integer,
    "string": _string,
    "boolean": _boolean,
    "epoch_ms": _epoch_ms,
    "epoch_s": _epoch_s,
}


class CastStep(Step):
    """Converts the columns' values in ``record``, ``old`` and ``key``; null stays null."""

    kind = "cast"

    def __init__(
        self, index: int, tables: Sequence[str] | None, columns: Mapping[str, str]
    ) -> None:
        super().__init__(index, tables, tuple(columns))
        self._casts = [(name, target, _CASTS[target]) for name, target in columns.items()]

    def run(self, draft: Draft) -> Draft:
        for row in row_dicts(draft.env):
            for name, target, cast in self._casts:
                value = row.get(name)
                if value is None:
                    continue
                try:
                    row[name] = cast(value)
                except (ValueError, TypeError, OverflowError, ArithmeticError):
                    raise StepFailed(
                        f"column {name} of {draft.event.table}: cannot cast {value!r} to {target}"
                    ) from None
        return draft
