"""Kafka records shaped as the relay's Kafka sink writes them, for tests and
benchmarks of ``walrelay worker`` that feed a topic without running a relay."""

from __future__ import annotations

from typing import Any

import orjson

from walrelay.model import format_event_id, format_lsn

__all__ = ["relay_update"]


def relay_update(
    table: str,
    key: int,
    row: dict[str, Any],
    lsn: int,
    committed_at: str = "2024-01-02T03:04:05+00:00",
) -> tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]:
    """(value, key, headers) of an UPDATE of ``row`` (key column ``id``) committed
    at ``lsn``: the walrelay envelope, the key as canonical JSON, the headers."""
    ident = format_event_id(lsn, 0)
    body = {
        "id": ident,
        "op": "update",
        "table": table,
        "key": {"id": key},
        "record": row,
        "old": None,
        "commit_lsn": format_lsn(lsn),
        "xid": lsn,
        "committed_at": committed_at,
    }
    headers: list[tuple[str, str | bytes | None]] = [
        ("id", ident.encode()),
        ("op", b"update"),
        ("table", table.encode()),
    ]
    return orjson.dumps(body), orjson.dumps({"id": key}), headers
