"""The one poller of the test suite: await a condition, fail naming it.

Tests wait for conditions, never for a length of time. When the condition
has no awaitable of its own (a file that grows, a row in a table, a counter
of the code under test), :func:`wait_for` polls it; a test that is not a
coroutine uses :func:`wait_for_sync`, the same poller on its own event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 30.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    """Await until ``predicate()`` is true; fail with ``what`` after ``within`` s.

    ``interval``: seconds between checks; 0.001 for in-process counters
    (unit tests), the default for servers, files and child processes.
    """
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)  # polling interval for a condition with no awaitable


def wait_for_sync(
    predicate: Callable[[], bool], *, within: float = 30.0, what: str = "condition"
) -> None:
    """:func:`wait_for` for a test that is not a coroutine (blocks until done)."""
    asyncio.run(wait_for(predicate, within=within, what=what))
