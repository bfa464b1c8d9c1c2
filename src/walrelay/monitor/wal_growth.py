"""How fast a slot's retained WAL grows, from its samples (``slot_sample_history``).

A least-squares line through (sample time, retained bytes). It says "growing"
only when the growth is real: at least :data:`MIN_SAMPLES` samples, the line
rising by at least :data:`MIN_GROWTH_BYTES` over the samples, and the points
close to the line (r² at least :data:`MIN_R_SQUARED`), so the saw-tooth of a
healthy slot, whose restart position jumps forward now and then, is not taken
for a trend. From the rate the doctor estimates when the slot passes
``max_slot_wal_keep_size`` (its ``safe_wal_size`` runs out: the slot is lost)
and when the disk under ``pg_wal`` fills.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from walrelay.monitor.thresholds import MiB

__all__ = [
    "GROWTH_WINDOW_SECONDS",
    "MIN_GROWTH_BYTES",
    "MIN_R_SQUARED",
    "MIN_SAMPLES",
    "Growth",
    "estimate_growth",
]

GROWTH_WINDOW_SECONDS = 3600.0
"""The samples the rate is taken over: the last hour."""
MIN_SAMPLES = 3
MIN_GROWTH_BYTES = 16 * MiB
"""One WAL segment: less is noise for a slot on a working database."""
MIN_R_SQUARED = 0.5


@dataclass(frozen=True)
class Growth:
    """A sustained growth of a slot's retained WAL."""

    bytes_per_second: float
    span_seconds: float  # from the oldest sample used to now
    samples: int
    first_bytes: int  # retained WAL at the oldest sample used
    last_bytes: int  # retained WAL now

    def seconds_until(self, headroom: int) -> float:
        """How long ``headroom`` more bytes last at this rate."""
        return max(headroom, 0) / self.bytes_per_second


def estimate_growth(points: Sequence[tuple[float, int]]) -> Growth | None:
    """``points`` are (seconds ago, retained bytes), in any order, now included
    as (0, retained now); None unless the retained WAL grows steadily."""
    points = sorted(
        ((age, b) for age, b in points if 0 <= age <= GROWTH_WINDOW_SECONDS),
        key=lambda p: -p[0],
    )
    if len(points) < MIN_SAMPLES:
        return None
    xs = [-age for age, _ in points]
    ys = [float(b) for _, b in points]
    try:
        slope, _ = statistics.linear_regression(xs, ys)
        r = statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # all at one time, or a flat line
        return None
    span = xs[-1] - xs[0]
    if slope <= 0 or slope * span < MIN_GROWTH_BYTES or r * r < MIN_R_SQUARED:
        return None
    return Growth(slope, span, len(points), points[0][1], points[-1][1])
