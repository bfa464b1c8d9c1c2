"""What the monitor, the metrics and the status API read of a running engine.

A narrow, read-only view: the engine satisfies it; the monitor never imports
the engine (layers point one way, see the import-linter contracts).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from walrelay.config import Config
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.stats import EngineStats
from walrelay.source.snapshot import Progress


class EngineView(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> EngineStats: ...
    @property
    def tracker(self) -> LsnTracker: ...
    @property
    def destinations(self) -> Mapping[str, Destination]: ...
    @property
    def started(self) -> asyncio.Event: ...
    @property
    def progress(self) -> Mapping[str, Progress]: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def streaming(self) -> bool:
        """A replication connection is open and streaming."""
        ...

    @property
    def replication_paused(self) -> bool: ...
