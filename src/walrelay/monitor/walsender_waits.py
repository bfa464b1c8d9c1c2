"""Walsender CPU estimated from ``pg_stat_activity`` wait events, for a
database walrelay cannot see the ``/proc`` of (another host, a managed service).

Once a second :class:`WalsenderWaits` reads the wait event of every walsender
(``backend_type = 'walsender'``); a walsender with no wait event is running
on a CPU (decoding, sending), one waiting for WAL, for the client or for I/O
is not. The share of samples on CPU over the last :data:`WINDOW_SECONDS` is
the estimate of the share of a core it uses: with ~300 samples it is within
a few percent of what ``/proc`` says for a steady load. It is judged with
the thresholds of the ``/proc`` reading only once the window is full.
https://www.postgresql.org/docs/15/monitoring-stats.html#WAIT-EVENT-TABLE
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

__all__ = ["SAMPLE_SECONDS", "WALSENDER_WAITS", "WINDOW_SECONDS", "WalsenderWaits"]

log = logging.getLogger("walrelay.monitor")

SAMPLE_SECONDS = 1.0
WINDOW_SECONDS = 300.0
# The window counts as full when its samples span this share of it (a missed
# sample or two under load does not hold the judgement back).
_FULL = 0.9
# After a failed read: no reconnect storm while the source is away.
_RETRY_SECONDS = 10.0

WALSENDER_WAITS = """
select pid, wait_event is null as on_cpu
from pg_stat_activity
where backend_type = 'walsender'
"""

Reader = Callable[[], Awaitable[Sequence[tuple[int, bool]]]]


class WalsenderWaits:
    """Per walsender pid, its samples (monotonic time, on CPU) of the last window."""

    def __init__(self, read: Reader, *, window: float = WINDOW_SECONDS) -> None:
        self._read = read
        self.window = window
        self._samples: dict[int, deque[tuple[float, bool]]] = {}
        self.errors_total = 0

    def observe(self, rows: Iterable[tuple[int, bool]], now: float) -> None:
        seen = set()
        for pid, on_cpu in rows:
            seen.add(pid)
            samples = self._samples.setdefault(pid, deque())
            samples.append((now, bool(on_cpu)))
            while samples and samples[0][0] < now - self.window:
                samples.popleft()
        for pid in [p for p in self._samples if p not in seen]:
            del self._samples[pid]  # gone: a new walsender starts a new window

    def ratio(self, pid: int) -> float | None:
        """Share of the window's samples on CPU; None until the window is full."""
        samples = self._samples.get(pid)
        if not samples or samples[-1][0] - samples[0][0] < self.window * _FULL:
            return None
        return sum(on for _, on in samples) / len(samples)

    async def run(self, period: float = SAMPLE_SECONDS) -> None:
        """Sample every ``period`` until cancelled; a failed read is skipped."""
        while True:
            try:
                rows = await self._read()
            except Exception as e:  # the probe's own check reports the source unreachable
                self.errors_total += 1
                log.debug("monitor: walsender wait events not read: %s", e)
                await asyncio.sleep(max(period, _RETRY_SECONDS))
                continue
            self.observe(rows, time.monotonic())
            await asyncio.sleep(period)
