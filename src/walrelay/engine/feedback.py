"""Feedback to the server: standby status updates, and what may be forgotten.

The safe LSN is the :class:`~walrelay.pipeline.lsn.LsnTracker`'s; this module
tells the server (on a timer, on a keepalive that asks for a reply, and once
more at shutdown), remembers what it told it and when, and from that derives
the *trim floor*: below it no event is ever delivered again, so the dedup
ledgers forget those ids.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable

from walrelay import failpoints
from walrelay.model import Lsn
from walrelay.pipeline.ledger import TrimAware
from walrelay.pipeline.lsn import LsnTracker
from walrelay.source.stream import ReplicationSource

__all__ = ["SERVER_SETTLE_SECONDS", "Feedback"]

SERVER_SETTLE_SECONDS = 1.0
"""How long a confirmed LSN must have been sent before the ledgers trim below it."""


class Feedback:
    """Status updates for one slot, across its replication connections."""

    def __init__(
        self,
        tracker: LsnTracker,
        *,
        status_interval: float,
        trim_targets: Callable[[], Iterable[TrimAware]],
        oldest_parked: Callable[[], Lsn | None],
    ) -> None:
        self.tracker = tracker
        self.status_interval = status_interval
        self._trim_targets = trim_targets
        self._oldest_parked = oldest_parked
        self.last_sent: Lsn = -1
        # Confirmed LSNs sent, with when (see server_confirmed).
        self._sent: collections.deque[tuple[float, Lsn]] = collections.deque()
        self._server_floor: Lsn = 0
        # The slot's confirmed_flush_lsn when this run began: never sent lower
        # (a new slot's snapshot transaction sits one byte below it, and
        # PostgreSQL before 18 lets a status update move the slot back).
        self.slot_floor: Lsn = 0

    def send_status(self, stream: ReplicationSource) -> None:
        """Tell the server the tracker's confirmed LSN (now)."""
        confirmed = max(self.tracker.confirmed, self.slot_floor)
        stream.send_status(confirmed)
        if confirmed != self.last_sent:
            self._sent.append((time.monotonic(), confirmed))
            failpoints.hit(failpoints.LSN_AFTER_CONFIRM)
        self.last_sent = confirmed

    def server_confirmed(self) -> Lsn:
        """The newest confirmed LSN sent to the server at least a second ago.

        Only the server's position decides what is replayed after a crash, and
        the tracker's value may not have reached it yet: trimming the ledgers
        below the tracker's value could forget ids that are then replayed.
        """
        cutoff = time.monotonic() - SERVER_SETTLE_SECONDS
        sent = self._sent
        floor = self._server_floor
        while sent and sent[0][0] <= cutoff:
            floor = max(floor, sent.popleft()[1])
        self._server_floor = floor
        return floor

    def trim_floor(self) -> Lsn:
        """Below this commit LSN no event is ever delivered again. Parked events
        are re-delivered below the confirmed LSN, so the oldest one holds it."""
        floor = self.server_confirmed()
        oldest = self._oldest_parked()
        if oldest is not None and oldest < floor:
            floor = oldest
        return floor

    def trim(self) -> None:
        floor = self.trim_floor()
        for target in self._trim_targets():
            target.trim_below(floor)

    async def run(self, stream: ReplicationSource) -> None:
        """Trim and send status updates until cancelled: whenever the confirmed
        LSN moved, and at least every ``status_interval`` seconds."""
        interval = self.status_interval
        tick = min(1.0, interval) if interval > 0 else 1.0
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(tick)  # a timer, not synchronisation
            self.trim()
            now = time.monotonic()
            if (
                max(self.tracker.confirmed, self.slot_floor) != self.last_sent
                or now - last_time >= interval
            ):
                self.send_status(stream)
                last_time = now
