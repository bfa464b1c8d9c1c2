"""A Kafka record written by the relay -> the :class:`~walrelay.model.Event` it carried.

The relay's kafka sink (:mod:`walrelay.sinks.kafka`) writes the walrelay
envelope as the value, the envelope's key as canonical JSON as the record
key, and ``id``/``op``/``table`` headers. The event is rebuilt from that:
id (commit LSN and seq), op, table, commit time and xid from the envelope,
the body byte for byte (every destination receives the same envelope the
relay built), ``key_json`` from the envelope's key.

The grouping key (``Event.keys``) is ``<table>\\x1f<record key>``: the
record key decides the partition, so all events sharing a grouping key come
from one partition, in its order. A TRUNCATE has no key (a barrier, as in
``walrelay run``); a logical message keeps ``message\\x1f<prefix>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from walrelay import exact_json
from walrelay.model import Event, Op, parse_event_id

__all__ = ["Headers", "NotAnEnvelope", "event_from_record", "header"]

_SEP = "\x1f"
# Key values orjson reads exactly (an integer beyond 64 bits becomes a float).
_PLAIN = frozenset({str, int, bool, type(None)})
_OPS = frozenset({"insert", "update", "delete", "truncate", "message", "read"})


class NotAnEnvelope(ValueError):
    """The record's value is not a walrelay envelope (says why)."""


Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


def header(headers: Headers, name: str) -> str | None:
    """The value of the record header ``name`` as text, or None."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for k, v in pairs:
        if k == name and v is not None:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return None


def event_from_record(
    value: bytes | None,
    key: bytes | None,
    headers: Headers,
) -> Event:
    """The event a relay record carries; :class:`NotAnEnvelope` when it is not one."""
    if value is None:
        raise NotAnEnvelope("a tombstone (null value)")
    try:
        env: Any = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise NotAnEnvelope(f"the value is not JSON ({e})") from None
    if not isinstance(env, dict):
        raise NotAnEnvelope("the value is not a JSON object")
    ident = env.get("id") or header(headers, "id")
    op = env.get("op") or header(headers, "op")
    if not isinstance(ident, str) or op not in _OPS:
        raise NotAnEnvelope("no walrelay event id or op (is the topic written by walrelay?)")
    try:
        commit_lsn, seq = parse_event_id(ident)
    except ValueError as e:
        raise NotAnEnvelope(str(e)) from None
    table = header(headers, "table") or env.get("table") or ""
    committed = env.get("committed_at")
    try:
        committed_at = (
            datetime.fromisoformat(committed) if isinstance(committed, str) else datetime.now(UTC)
        )
    except ValueError:
        committed_at = datetime.now(UTC)
    key_value = env.get("key")
    if isinstance(key_value, dict) and not all(type(v) in _PLAIN for v in key_value.values()):
        key_value = exact_json.loads(value).get("key")  # a float or json key column
    key_json = exact_json.dumps(key_value) if key_value is not None else b"null"
    keys: tuple[str, ...]
    if op == "truncate":
        keys = ()
    elif op == "message":
        keys = ("message" + _SEP + str(env.get("prefix")),)
    else:
        record_key = key.decode("utf-8", "replace") if key is not None else ""
        keys = (table + _SEP + record_key,)
    xid = env.get("xid")
    return Event(
        commit_lsn=commit_lsn,
        seq=seq,
        op=cast(Op, op),
        table=table,
        keys=keys,
        body=value,
        xid=xid if isinstance(xid, int) else 0,
        committed_at=committed_at,
        key_json=key_json,
    )
