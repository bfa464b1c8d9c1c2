"""walrelay.units: the one size and duration formatter."""

from __future__ import annotations

import math

import pytest

from walrelay.units import format_bytes, format_duration

KiB = 1024
MiB = 1024**2
GiB = 1024**3


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 kB"),
        (1536, "1.5 kB"),
        (MiB - 1, "1.0 MB"),  # 1023.999 kB would read 1024.0 kB
        (MiB - 52, "1023.9 kB"),  # still below the rounding boundary
        (2 * MiB, "2.0 MB"),
        (GiB, "1.0 GB"),
        (5 * GiB + GiB // 2, "5.5 GB"),
        (1024 * GiB, "1.0 TB"),
        (1024**5, "1.0 PB"),
        (1024**6, "1024.0 PB"),  # the largest unit keeps counting
        (1023.6, "1.0 kB"),  # a float rounding up to 1024 bytes
        (1023.4, "1023 B"),
        (-1536, "-1.5 kB"),
        (-1, "-1 B"),
        (None, "?"),
        (math.nan, "?"),
        (math.inf, "?"),
    ],
)
def test_format_bytes(n: float | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (0.04, "0.0s"),
        (0.05, "0.1s"),
        (10, "10.0s"),
        (119.9, "119.9s"),
        (119.96, "2.0min"),  # would read 120.0s
        (120, "2.0min"),
        (150, "2.5min"),
        (7199, "2.0h"),  # 119.98 min rounds to 120.0
        (7193, "119.9min"),
        (7200, "2.0h"),
        (47.9 * 3600, "47.9h"),
        (48 * 3600, "2.0d"),
        (10 * 86400, "10.0d"),
        (-5, "-5.0s"),
        (-300, "-5.0min"),
        (None, "?"),
        (math.nan, "?"),
        (-math.inf, "?"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
