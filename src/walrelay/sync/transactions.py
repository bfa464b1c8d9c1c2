"""What a node's reader hands to the appliers of its changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from walrelay.model import Change, Lsn

__all__ = ["Marker", "SourceTx"]


@dataclass(frozen=True, slots=True)
class SourceTx:
    """One committed transaction of a node, whole, in its commit order."""

    node: str
    commit_lsn: Lsn
    end_lsn: Lsn
    committed_at: datetime
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Marker:
    """Nothing to apply up to ``end_lsn`` (echoes dropped, or a quiet slot):
    the direction may count it as passed."""

    end_lsn: Lsn
    at: datetime | None = None  # source time passed (an echo's commit time, a keepalive's time)
