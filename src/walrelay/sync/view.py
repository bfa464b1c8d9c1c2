"""What the status, the metrics and the dashboard read of a running sync
(:class:`walrelay.sync.runner.SyncRunner` satisfies it), and each direction's lag."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from walrelay.sync.applier import Direction
from walrelay.sync.config import SyncSettings
from walrelay.sync.reader import NodeReader

__all__ = ["SyncView", "direction_lag"]


class SyncView(Protocol):
    @property
    def settings(self) -> SyncSettings: ...
    @property
    def directions(self) -> Mapping[tuple[str, str], Direction]: ...
    @property
    def readers(self) -> Mapping[str, NodeReader]: ...
    @property
    def ready(self) -> asyncio.Event: ...
    @property
    def stopping(self) -> bool: ...


def direction_lag(direction: Direction, reader: NodeReader | None) -> tuple[int | None, float]:
    """(bytes of the source's WAL not yet applied or passed -- None before the
    source was heard from --, seconds since the source commit time the direction
    has passed while it is behind; 0 when caught up)."""
    wal_end = reader.wal_end if reader is not None else 0
    behind_bytes = max(0, wal_end - direction.applied_end) if wal_end else None
    behind = bool(behind_bytes) or direction.queue.qsize() > 0
    passed = direction.passed_time or direction.stats.last_commit_time
    seconds = 0.0
    if behind and passed is not None:
        seconds = max(0.0, (datetime.now(UTC) - passed).total_seconds())
    return behind_bytes, seconds
