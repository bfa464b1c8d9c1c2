"""What a sink does with an event's :class:`~walrelay.model.Rendering` (set by a
destination's output format, :mod:`walrelay.pipeline.formats`).

- :func:`http_headers` / :func:`kafka_headers`: the CloudEvents binary-mode
  attributes as ``ce-`` HTTP headers (percent-encoded as the HTTP binding
  asks) or ``ce_`` Kafka headers (UTF-8, the Kafka binding), plus the body's
  content type;
- :class:`RecordKeys`: a broker record's key by the sink's ``key_format``
  (``walrelay`` | ``debezium`` | ``column:<name>``), and the old key of an
  UPDATE that changed it (for a tombstone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import orjson

from walrelay import exact_json
from walrelay.model import Event

__all__ = ["RecordKeys", "http_headers", "kafka_headers"]

# Printable ASCII except space, '"' and '%' stays as is in an HTTP header value.
_CE_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_SORT: Final = orjson.OPT_SORT_KEYS


def http_headers(event: Event) -> dict[str, str]:
    rendering = event.rendering
    if rendering is None:
        return {}
    out = {f"ce-{name}": quote(value, safe=_CE_SAFE) for name, value in rendering.attributes}
    if rendering.content_type is not None:
        out["Content-Type"] = rendering.content_type
    return out


def kafka_headers(event: Event) -> list[tuple[str, bytes]]:
    rendering = event.rendering
    if rendering is None:
        return []
    out = [(f"ce_{name}", value.encode()) for name, value in rendering.attributes]
    if rendering.content_type is not None:
        out.append(("content-type", rendering.content_type.encode()))
    return out


def _loads(data: bytes) -> Any:
    return exact_json.loads(data)  # a json key column's numbers as written


def _rows(event: Event) -> tuple[dict[str, Any], dict[str, Any]]:
    """(new row, old row) of an event's body, whichever format rendered it."""
    env = _loads(event.body)
    if not isinstance(env, dict):
        return {}, {}
    if isinstance(env.get("data"), dict):  # CloudEvents structured mode
        env = env["data"]
    new = env.get("record", env.get("after"))
    old = env.get("old", env.get("before"))
    return (new if isinstance(new, dict) else {}), (old if isinstance(old, dict) else {})


def _key_object(event: Event) -> dict[str, Any] | None:
    key_json = event.key_json
    if key_json is None:
        env = _loads(event.body)
        key = env.get("key") if isinstance(env, dict) else None
    else:
        key = _loads(key_json)
    return key if isinstance(key, dict) else None


def _raw(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return exact_json.dumps(value)


class RecordKeys:
    """A record's key, and the old key of a key-changing UPDATE, by ``key_format``."""

    def __init__(self, key_format: str, walrelay_key: Callable[[Event, str], bytes]) -> None:
        self.key_format = key_format
        self._walrelay_key = walrelay_key
        self._column = key_format[len("column:") :] if key_format.startswith("column:") else None

    def key(self, event: Event, table: str) -> bytes | None:
        if self.key_format == "walrelay":
            return self._walrelay_key(event, table)
        if self._column is not None:
            return self._column_value(event)
        rendering = event.rendering
        if rendering is not None and rendering.key is not None and rendering.key != b"null":
            return rendering.key
        if event.op == "message":
            return self._walrelay_key(event, table)  # {"prefix": ...}
        if event.op == "truncate":
            return None
        key = _key_object(event)
        return None if key is None else exact_json.dumps(key)  # column order, as Debezium

    def _column_value(self, event: Event) -> bytes | None:
        name = self._column
        assert name is not None
        key = _key_object(event)
        if key is not None and name in key:
            return _raw(key[name])
        new, old = _rows(event)
        row = old if event.op == "delete" else new
        return _raw(row.get(name))

    def old_key(self, event: Event) -> bytes | None:
        """The key before an UPDATE that changed it; None for anything else."""
        if event.op != "update":
            return None
        rendering = event.rendering
        if rendering is not None and rendering.old_key is not None:
            if self.key_format == "walrelay":
                return exact_json.dumps(_loads(rendering.old_key), option=_SORT)
            if self.key_format == "debezium":
                return rendering.old_key
        if (
            rendering is not None
            and rendering.content_type is None
            and (self._column is None or rendering.old_key is None)
        ):
            return None  # Debezium's body: its before holds converted values; old_key says

        key = _key_object(event)
        _new, old = _rows(event)
        if not old:
            return None
        if self._column is not None:
            name = self._column
            if name not in old or (key is not None and key.get(name) == old[name]):
                return None
            new_value = _raw(key[name]) if key is not None and name in key else None
            old_value = _raw(old[name])
            return None if old_value == new_value else old_value
        if key is None or not all(k in old for k in key):
            return None
        old_key = {k: old[k] for k in key}
        if old_key == key:
            return None
        return exact_json.dumps(old_key, option=_SORT if self.key_format == "walrelay" else 0)
