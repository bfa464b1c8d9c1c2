"""What the formatters share: reading walrelay's envelope back, and the event
with its new body and rendering."""

from __future__ import annotations

from typing import Any

import orjson

from walrelay import exact_json
from walrelay.model import Event, Rendering

__all__ = ["decode_envelope", "rendered"]


def decode_envelope(body: bytes, *, exact: bool = True) -> dict[str, Any]:
    """walrelay's envelope as a dict, every number exact
    (:func:`walrelay.exact_json.loads`). ``exact=False``: a body known to hold
    no json value nor a number a step wrote (then orjson's reading is exact:
    integers, floats printed shortest) skips the check."""
    value = exact_json.loads(body) if exact else _fast(body)
    if not isinstance(value, dict):
        raise ValueError("an event body that is not a JSON object")
    return value


def _fast(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return exact_json.loads(body)


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
