"""Sizes and durations as people read them, the same in every message.

Alerts, ``walrelay status``, the doctor and notifications all print through
these two functions, so a threshold reads the same wherever it appears.
Sizes use PostgreSQL's units (``kB``, ``MB``, ... are powers of 1024, as in
``pg_size_pretty`` and postgresql.conf); unknown values (None, NaN,
infinite) print as ``?``.
"""

from __future__ import annotations

import math

__all__ = ["format_bytes", "format_duration"]

_BYTE_UNITS = ("kB", "MB", "GB", "TB", "PB")
_DURATION_UNITS = (
    # (unit, seconds in it, print in this unit below this many of it)
    ("s", 1.0, 120.0),
    ("min", 60.0, 120.0),
    ("h", 3600.0, 48.0),
    ("d", 86400.0, float("inf")),
)


def format_bytes(n: float | None) -> str:
    """``512 B``, ``1.5 kB``, ``2.0 MB``, ... ``3.1 PB``; None is ``?``.

    A value switches to the next unit where its one-decimal rounding would
    read 1024 (so 1048575 bytes is ``1.0 MB``, not ``1024.0 kB``).
    """
    if n is None or not math.isfinite(n):
        return "?"
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    if round(value) < 1024:
        return f"{sign}{value:.0f} B"
    for unit in _BYTE_UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """``45.0s``, ``2.5min``, ``3.0h``, ``4.2d``; None is ``?``.

    Seconds up to two minutes, minutes up to two hours, hours up to two days,
    then days; like sizes, a value that would round up to the limit moves to
    the next unit (119.97 s is ``2.0min``).
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    sign = "-" if seconds < 0 else ""
    value = abs(float(seconds))
    for unit, size, limit in _DURATION_UNITS:
        amount = value / size
        if round(amount, 1) < limit:
            return f"{sign}{amount:.1f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover
