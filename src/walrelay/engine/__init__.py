"""The process: lifecycle, the replication session, snapshots and backfills."""

from walrelay.engine.core import Engine

__all__ = ["Engine"]
