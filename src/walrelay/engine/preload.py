"""Import, on a thread, modules a run needs only once it is set up.

``walrelay run`` spends its first ~0.1-0.2 s waiting on the database (the HA
lock, slot, publication and table checks, the state schema). A module the run
imports later -- the HTTP server's, with aiohttp: ~0.2 s of CPU -- is imported
meanwhile on a daemon thread, so that its import overlaps those waits instead
of delaying the first change. Python's per-module import locks make the later
``import`` in the event loop wait for the thread's import, or find it done.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Sequence

__all__ = ["preload"]


def preload(modules: Sequence[str]) -> threading.Thread:
    """Start importing ``modules`` on a daemon thread (returned, for tests)."""

    def load() -> None:
        for name in modules:
            # A module that fails here fails again where the run imports it,
            # with its own error in its place.
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="walrelay-preload", daemon=True)
    thread.start()
    return thread
