"""A Kafka record of a Debezium topic -> the :class:`~walrelay.model.Event` it carries.

``worker.kafka.format: debezium`` reads what Debezium's PostgreSQL connector
writes with JsonConverter (``schemas.enable`` true: ``{"schema", "payload"}``,
or false: the payload alone), and what walrelay's own ``format: debezium``
writes. Each change event becomes walrelay's envelope
(:mod:`walrelay.pipeline.envelope`), so transforms, formats and every sink
(the PostgreSQL sink applies it) work as for a relay topic:

- ops ``c`` insert, ``u`` update, ``d`` delete, ``r`` read (snapshot rows),
  ``t`` truncate, ``m`` logical message; a tombstone (null value) is no event;
- the table is ``source.schema`` + ``.`` + ``source.table``; ``record`` is
  ``after``, ``old`` is ``before``; a column holding Debezium's placeholder
  for an unchanged TOASTed value is left out and listed in ``unchanged``, as
  walrelay's envelope does; values are converted by their schema
  (:mod:`walrelay.worker.debezium_values`);
- ``key`` is the record key's payload (Debezium's key struct); the grouping key
  (``Event.keys``) is ``<table>\\x1f<that payload as sorted JSON>``: a record
  key decides the partition, so a key's events come from one partition in
  its order. A truncate is a barrier (no key), a message keys on its prefix.

The event id (``<commit_lsn>/<seq>``, the ledger's and parking's key) is the
relay's own when the record has walrelay's ``id`` header. Otherwise it is
derived from the source position, so reading a record again (a rebalance, a
worker's crash) gives it the same id and the ledger drops what was sent
(:func:`derive_id`).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from walrelay import exact_json
from walrelay.model import Event, Op, format_event_id, parse_event_id
from walrelay.pipeline.envelope import encode_json, envelope_head, message_content
from walrelay.worker.debezium_values import row_converter
from walrelay.worker.records import Headers, NotAnEnvelope, header

__all__ = ["derive_id", "event_from_debezium"]

_SEP: Final = "\x1f"
_OPS: Final[dict[str, Op]] = {
    "c": "insert",
    "u": "update",
    "d": "delete",
    "r": "read",
    "t": "truncate",
    "m": "message",
}
_FIX: Final = (
    "is the topic written by Debezium's PostgreSQL connector? else set worker.kafka.format"
)

# The seq half of a derived id is an int4 (parked events store it so), split in
# regions that never meet: snapshot rows [0, 2^29); changes within ±2^28 bytes of
# WAL of their transaction's position [2^29, 1.5*2^30); the rest above.
_ROWS: Final = 1 << 29
_STREAM: Final = 1 << 29
_HALF: Final = 1 << 28
_FAR: Final = _STREAM + (1 << 30)
_TRUNCATES: Final = _FAR + 2
_TRUNCATE_SPAN: Final = (1 << 31) - 1 - _TRUNCATES
# Snapshot rows: topics and partitions told apart below the snapshot's LSN.
_PLACES: Final = 1024


def derive_id(
    op: str,
    source: Mapping[str, Any],
    partition: int,
    offset: int,
    table: str,
    topic_index: int = 0,
) -> tuple[int, int]:
    """``(commit_lsn, seq)`` of a Debezium event without walrelay's id header.

    Debezium's ``source.sequence`` is ``["<last commit LSN>", "<LSN>"]``: the
    end of the last transaction committed before this event's (the same for
    every event of a transaction, larger for each later one) and the change's
    own WAL position (increasing inside a transaction). So
    ``commit_lsn`` = the first, ``seq`` = where the second lies from it: ids
    grow in the order Debezium wrote the events, which is commit order, so per
    partition and per key. Without a sequence (older connectors), ``commit_lsn``
    is ``source.lsn`` (a later change of a row always has a larger LSN: it
    waited for the earlier one's commit). Both changes Debezium makes of a
    key-changing UPDATE (``d`` of the old key, ``c`` of the new) share one LSN:
    the ``c`` sorts after. A change more than 256 MB of WAL from its
    transaction's position gets ``commit_lsn`` = its own LSN (unique, in key
    order; not in partition order). Snapshot rows share one LSN and have no
    position of their own: their id is where the record is -- the LSN less
    ``topic_index * 1024 + partition`` (the topic's place in
    ``worker.kafka.topics``), and the offset -- which a replay reads again. A
    TRUNCATE of several tables is one event per table at one LSN: the table
    tells them apart.
    """
    lsn = _int(source.get("lsn"))
    if lsn is None:
        raise NotAnEnvelope(f"no source.lsn ({_FIX})")
    if op == "r":
        place = (topic_index % _PLACES) * _PLACES + partition % _PLACES
        return max(lsn - place, 0), offset % _ROWS
    last_commit = _last_commit(source.get("sequence"))
    major = last_commit if last_commit is not None else lsn
    if op == "t":
        digest = zlib.crc32(f"{table}\x00{lsn}".encode())
        return major, _TRUNCATES + digest % _TRUNCATE_SPAN
    sub = 1 if op == "c" else 0
    distance = lsn - major
    if -_HALF <= distance < _HALF:
        return major, _STREAM + 2 * (distance + _HALF) + sub
    return lsn, _FAR + sub


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _last_commit(sequence: Any) -> int | None:
    """The first element of ``source.sequence`` (a JSON array in a string), or None."""
    if not isinstance(sequence, str):
        return None
    try:
        pair = orjson.loads(sequence)
    except orjson.JSONDecodeError:
        return None
    if isinstance(pair, list) and pair:
        return _int(pair[0])
    return None


def _loads(data: bytes) -> Any:
    """JsonConverter's JSON. orjson reads it exactly: Connect's numbers are 64-bit
    integers and doubles, and a json column's document is a string (read by
    :mod:`walrelay.worker.debezium_values` with :mod:`walrelay.exact_json`)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return exact_json.loads(data)  # a number beyond a double, if anyone wrote one


def _relay_id(headers: Headers) -> tuple[int, int] | None:
    """The id in walrelay's ``id`` header (exactly as walrelay writes it), or None."""
    text = header(headers, "id")
    if text is None:
        return None
    try:
        commit_lsn, seq = parse_event_id(text)
    except ValueError:
        return None
    return (commit_lsn, seq) if format_event_id(commit_lsn, seq) == text else None


def _unwrap(doc: Any) -> tuple[Any, Mapping[str, Any] | None]:
    """(payload, schema) of JsonConverter output, with or without ``schemas.enable``."""
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc and len(doc) == 2:
        schema = doc["schema"]
        return doc["payload"], schema if isinstance(schema, dict) else None
    return doc, None


def _field(struct: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    if struct is None:
        return None
    for field in struct.get("fields") or ():
        if isinstance(field, dict) and field.get("field") == name:
            return field
    return None


def _committed_at(source: Mapping[str, Any], payload: Mapping[str, Any]) -> datetime:
    micros = _int(source.get("ts_us"))
    if micros is None:
        millis = _int(source.get("ts_ms")) or _int(payload.get("ts_ms"))
        micros = millis * 1000 if millis is not None else None
    if micros is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def event_from_debezium(
    value: bytes | None,
    key: bytes | None,
    headers: Headers,
    *,
    partition: int,
    offset: int,
    topic_index: int = 0,
) -> Event | None:
    """The event a Debezium record carries; None for a tombstone;
    :class:`NotAnEnvelope` (saying why and what to check) for anything else.
    ``topic_index``: the record's topic's place in ``worker.kafka.topics``."""
    if value is None:
        return None
    try:
        doc = _loads(value)
    except ValueError as e:
        raise NotAnEnvelope(f"the value is not JSON ({e}; {_FIX})") from None
    payload, schema = _unwrap(doc)
    if payload is None:
        return None  # schemas.enable=true writes a tombstone as a null value too
    if not isinstance(payload, dict):
        raise NotAnEnvelope(f"the value is not a JSON object ({_FIX})")
    code = payload.get("op")
    if code is None:
        raise NotAnEnvelope(f"no op field ({_FIX})")
    op = _OPS.get(code) if isinstance(code, str) else None
    if op is None:
        raise NotAnEnvelope(f"unknown op {code!r} (Debezium ops: c, u, d, r, t, m)")
    source = payload.get("source")
    if not isinstance(source, dict):
        raise NotAnEnvelope(f"no source block ({_FIX})")
    schema_name, table_name = source.get("schema"), source.get("table")
    table = f"{schema_name}.{table_name}" if schema_name and table_name else ""
    if not table and op != "message":
        raise NotAnEnvelope(f"no source.schema/source.table ({_FIX})")
    ident = _relay_id(headers) or derive_id(code, source, partition, offset, table, topic_index)
    commit_lsn, seq = ident
    txid = _int(source.get("txId"))
    committed_at = _committed_at(source, payload)
    env = envelope_head(commit_lsn, seq, op, txid or 0, committed_at)
    keys: tuple[str, ...]
    key_json = b"null"
    if op == "message":
        message = payload.get("message")
        prefix, content = _message(message)
        env["prefix"] = prefix
        env["content"], env["content_encoding"] = message_content(content)
        keys = ("message" + _SEP + prefix,)
        table = ""
    elif op == "truncate":
        # walrelay sends a TRUNCATE of several tables to each table's topic, with
        # the first in source.table and the topic's own in the table header.
        table = header(headers, "table") or table
        env["tables"] = [table]
        env["cascade"] = False
        env["restart_identity"] = False
        keys = ()
    else:
        env["table"] = table
        key_obj, group = _key(key)
        keys = (table + _SEP + group,) if group is not None else (table,)
        before, _ = _row(payload.get("before"), _field(schema, "before"))
        after, unchanged = _row(payload.get("after"), _field(schema, "after"))
        if op == "delete":
            env["old"] = before if before is not None else key_obj
        else:
            env["record"] = after
            env["old"] = before
            if unchanged:
                env["unchanged"] = unchanged
        env["key"] = key_obj
        key_json = encode_json(key_obj)
    return Event(
        commit_lsn=commit_lsn,
        seq=seq,
        op=op,
        table=table,
        keys=keys,
        body=encode_json(env),
        xid=txid or 0,
        committed_at=committed_at,
        key_json=key_json,
    )


def _row(values: Any, struct: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
    if not isinstance(values, dict):
        return None, []
    return row_converter(struct)(values)


def _key(key: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the envelope's key, the grouping key's text) of a record key."""
    if key is None:
        return None, None
    try:
        doc = _loads(key)
    except ValueError:
        text = key.decode("utf-8", "replace")
        return None, text  # not JSON (a custom key converter): group by its bytes
    payload, schema = _unwrap(doc)
    if not isinstance(payload, dict):
        return None, exact_json.dumps(payload).decode()
    group = exact_json.dumps(payload, orjson.OPT_SORT_KEYS).decode()
    converted, _ = row_converter(schema)(payload)
    return converted, group


def _message(message: Any) -> tuple[str, bytes]:
    if not isinstance(message, dict):
        raise NotAnEnvelope(f"an op m event without its message block ({_FIX})")
    prefix = message.get("prefix")
    content = message.get("content")
    data = b""
    if isinstance(content, str):
        try:
            data = base64.b64decode(content, validate=True)
        except ValueError:
            data = content.encode()
    return (prefix if isinstance(prefix, str) else ""), data
