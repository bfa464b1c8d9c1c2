"""The garbage collector's pace for a streaming process (``walrelay run``).

Every streamed change allocates a few container objects (the decoded change,
its row tuple, the event and its keys) and thousands of events wait in the
destination buffers at any time. With CPython's default first threshold
(700 net allocations) the collector then runs every couple of hundred
changes, traversing the young objects each time: measured at 15-25% of the
CPU of the read loop (bench/throughput.py). Raising the first threshold makes
the young collections rarer without keeping garbage longer than it takes to
stream a few thousand changes; the older generations keep their defaults.
Reference cycles are still collected: only later.
"""

from __future__ import annotations

import gc

__all__ = ["STREAMING_GC_THRESHOLD", "tune_gc_for_streaming"]

STREAMING_GC_THRESHOLD = 10_000
"""Net container allocations between two young-generation collections."""


def tune_gc_for_streaming() -> None:
    """Set the collector's first threshold for a streaming process (idempotent)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(STREAMING_GC_THRESHOLD, older, oldest)
