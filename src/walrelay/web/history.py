"""Server-side history for the dashboard's charts: filled the moment it opens.

Every :data:`SAMPLE_SECONDS` a sampler takes from the status document what the
charts draw (per destination: delivered total and lag; per slot: retained
WAL) into a ring of :data:`KEEP_SECONDS` (20 min), so memory stays bounded:
``KEEP_SECONDS / SAMPLE_SECONDS`` points of a few numbers per destination
and slot. ``GET /api/history`` returns it; the page draws it and then
appends its own polls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["KEEP_SECONDS", "SAMPLE_SECONDS", "History"]

log = logging.getLogger("walrelay.web")

SAMPLE_SECONDS = 5.0
KEEP_SECONDS = 20 * 60.0


def _point(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "t": status["time"],
        "destinations": {
            d["name"]: {"events_out": d.get("events_out") or 0, "lag": d.get("lag") or 0.0}
            for d in status.get("destinations", [])
        },
        "slots": {s["name"]: s.get("retained_bytes") or 0 for s in status.get("slots", [])},
    }


class History:
    """A bounded ring of status samples, filled by :meth:`run`."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        *,
        interval: float | None = None,
        keep_seconds: float = KEEP_SECONDS,
    ) -> None:
        self._status = status
        self.interval = SAMPLE_SECONDS if interval is None else interval
        self.points: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(2, int(keep_seconds / self.interval))
        )
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.points.append(_point(self._status()))

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "points": list(self.points)}

    async def run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # the dashboard's history must never take the engine down
                log.debug("dashboard history: sampling failed", exc_info=True)
            await asyncio.sleep(self.interval)  # the sampling timer

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="walrelay-dashboard-history"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
