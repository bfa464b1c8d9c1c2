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

Start-up (imports, the config's models, the engine's set-up) allocates some
55,000 long-lived objects and next to no garbage (~900 objects in cycles):
the collector is paused while it runs (``walrelay run`` disables it first
thing), and what it built is then frozen
(``gc.freeze``), so the full collections of a long run do not traverse it
again and again (one full pass over it: ~0.1 s).
"""

from __future__ import annotations

import gc

__all__ = [
    "STREAMING_GC_THRESHOLD",
    "skip_collections_at_exit",
    "tune_gc_for_streaming",
]

STREAMING_GC_THRESHOLD = 10_000
"""Net container allocations between two young-generation collections."""


def tune_gc_for_streaming() -> None:
    """Freeze what start-up built, set the collector's first threshold for a
    streaming process, and (re-)enable it (idempotent)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(STREAMING_GC_THRESHOLD, older, oldest)
    gc.enable()


def skip_collections_at_exit() -> None:
    """Leave every object alive now out of the collections of the interpreter's
    exit: it runs full collections while tearing down modules, over every
    object of the run (measured 0.2-0.5 s after ``walrelay run`` returned).
    Call it once the run is over, its sinks closed and its files flushed:
    objects are still freed by their reference counts, and the process ends
    right after, so only reference cycles are left to the operating system."""
    gc.freeze()
