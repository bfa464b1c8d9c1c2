"""Counters of one engine's stream, read by the monitor, metrics and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from walrelay.model import Lsn

if TYPE_CHECKING:
    from walrelay.pipeline.router import Router


@dataclass
class EngineStats:
    transactions_in: int = 0
    last_commit_lsn: Lsn = 0
    last_delivery_lag: float | None = None
    reconnects: int = 0
    # Replication connections closed because delivery stayed blocked (engine.session).
    backpressure_releases: int = 0
    heartbeat_lag: float | None = None  # seconds, set by heartbeats when they run
    router: Router | None = field(default=None, repr=False)

    @property
    def events_in(self) -> int:
        """Events built and routed (each once, however many destinations take it)."""
        return self.router.events_in if self.router is not None else 0
