"""Custom conflict policy of the sync tests (python:tests.integration.sync_policies:add_up)."""

from __future__ import annotations

from typing import Any

from walrelay.sync.conflicts import Conflict


def add_up(conflict: Conflict) -> dict[str, Any] | None:
    """Keep the sum of both versions' ``n`` (the same on every node: it converges)."""
    local, remote = conflict.local.row, conflict.remote.row
    if local is None or remote is None:
        return remote if local is None else local
    return {**remote, "v": "sum", "n": int(local["n"]) + int(remote["n"])}
