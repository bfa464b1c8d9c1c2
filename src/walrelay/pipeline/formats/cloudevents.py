"""``format: cloudevents``: CloudEvents 1.0 around walrelay's envelope.

Attributes: ``specversion: "1.0"``, ``id`` = the event id
(``<commit_lsn>/<seq>``), ``source`` = ``/walrelay/<slot>`` (configurable),
``type`` from the ``type`` template (default ``walrelay.<schema>.<table>.<op>``;
logical messages: ``message_type``), ``subject`` = the key as compact JSON
(a logical message: its prefix; none for a truncate), ``time`` = the commit
time (RFC 3339), ``datacontenttype: application/json``; ``data`` is
walrelay's envelope, spliced in byte for byte (every number of a json column as
PostgreSQL printed it).

Structured mode (default): the body is the whole CloudEvent as one JSON
document. Binary mode: the body is the envelope and the attributes travel as
:attr:`Rendering.attributes <walrelay.model.Rendering>`, which the webhook
sink sends as ``ce-`` HTTP headers and the Kafka sink as ``ce_`` record
headers (the CloudEvents HTTP and Kafka protocol bindings).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from walrelay import exact_json
from walrelay.format_config import CloudEventsOptions
from walrelay.model import Event, Rendering
from walrelay.pipeline.formats.common import decode_envelope, rendered
from walrelay.pipeline.transaction_metadata import TransactionOrder

__all__ = ["STRUCTURED_TYPE", "CloudEventsFormatter"]

STRUCTURED_TYPE = "application/cloudevents+json"


class CloudEventsFormatter:
    """Wraps walrelay envelopes as CloudEvents (module docstring)."""

    def __init__(self, options: CloudEventsOptions, *, slot: str) -> None:
        self._options = options
        self._source = options.source or f"/walrelay/{slot}"
        self._binary = options.mode == "binary"
        self._types: dict[tuple[str, str], str] = {}
        self._time_of: datetime | None = None
        self._time = ""

    def _type(self, table: str, op: str) -> str:
        cached = self._types.get((table, op))
        if cached is None:
            if op in ("begin", "end"):
                cached = f"walrelay.transaction.{op}"
            elif table:
                schema, _, name = table.partition(".")
                cached = self._options.type.format(schema=schema, table=name, op=op)
            else:
                cached = self._options.message_type.format(op=op)
            self._types[(table, op)] = cached
        return cached

    def _subject(self, event: Event) -> str | None:
        if event.op == "message":
            prefix = decode_envelope(event.body).get("prefix")
            return prefix if isinstance(prefix, str) else None
        if event.op == "truncate":
            return None
        key_json = event.key_json
        if key_json is None:
            key = decode_envelope(event.body).get("key")
            key_json = None if key is None else exact_json.dumps(key)
        return None if key_json is None or key_json == b"null" else key_json.decode()

    def attributes(self, event: Event) -> dict[str, str]:
        at = event.committed_at
        if at is not self._time_of:  # one transaction's events share their commit time
            self._time_of = at
            utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            self._time = utc.isoformat().replace("+00:00", "Z")
        table = event.table
        if event.op == "truncate" and not table:
            tables = decode_envelope(event.body).get("tables") or [""]
            table = tables[0]
        attrs = {
            "specversion": "1.0",
            "id": event.id,
            "source": self._source,
            "type": self._type(table if event.op != "message" else "", event.op),
        }
        subject = self._subject(event)
        if subject is not None:
            attrs["subject"] = subject
        attrs["time"] = self._time
        attrs["datacontenttype"] = "application/json"
        return attrs

    def render(
        self, event: Event, snapshot: str, transaction: TransactionOrder | None = None
    ) -> Event:
        """``event`` as a CloudEvent: the body (structured) or the attributes (binary)."""
        del snapshot, transaction  # the envelope's op says "read"; begin/end carry the counts
        attrs = self.attributes(event)
        tables = _tables(event)
        if self._binary:
            # datacontenttype travels as the Content-Type of the body.
            content_type = attrs.pop("datacontenttype")
            rendering = Rendering(
                key=event.key_json,
                attributes=tuple(attrs.items()),
                tables=tables,
                content_type=content_type,
            )
            return rendered(event, event.body, rendering)
        document: dict[str, Any] = dict(attrs)
        document["data"] = orjson.Fragment(event.body)
        body = memoryview(orjson.dumps(document)).tobytes()
        rendering = Rendering(key=event.key_json, tables=tables, content_type=STRUCTURED_TYPE)
        return rendered(event, body, rendering)


def _tables(event: Event) -> tuple[str, ...]:
    if event.op != "truncate":
        return ()
    tables = decode_envelope(event.body).get("tables") or []
    return tuple(t for t in tables if isinstance(t, str))
