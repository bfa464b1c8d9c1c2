"""``--initial copy-from NODE``: copy the tables from one node to the others."""

from __future__ import annotations

from typing import Any

import psycopg

from walrelay.errors import ConfigError
from walrelay.sync.catalog import NodeTables
from walrelay.sync.config import SyncSettings

__all__ = ["copy_from"]


async def copy_from(
    settings: SyncSettings,
    source: str,
    conns: dict[str, psycopg.AsyncConnection[tuple[Any, ...]]],
    tables: dict[str, NodeTables],
) -> None:
    raise ConfigError(f"--initial copy-from {source}: not implemented yet")
