"""What the formatters share: reading walrelay's envelope back, and the event
with its new body and rendering."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from walrelay.model import Event, Rendering

__all__ = ["decode_envelope", "rendered"]


def decode_envelope(body: bytes) -> dict[str, Any]:
    """walrelay's envelope as a dict (numbers orjson cannot hold: exact Decimals)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = json.loads(body, parse_float=Decimal)
    if not isinstance(value, dict):
        raise ValueError("an event body that is not a JSON object")
    return value


def rendered(event: Event, body: bytes, rendering: Rendering) -> Event:
    """``event`` with a format's body and rendering (a plain constructor call:
    dataclasses.replace costs several times more on this per-event path)."""
    return Event(
        event.commit_lsn,
        event.seq,
        event.op,
        event.table,
        event.keys,
        body,
        event.xid,
        event.committed_at,
        event.route,
        event.key_json,
        event.failure,
        rendering,
    )
