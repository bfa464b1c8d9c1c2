"""The outbox event router: outbox rows (and table-less outbox messages) -> routed events.

A destination with ``router: {type: outbox}`` gets, for every INSERT into the
outbox table and every ``pg_logical_emit_message(true, '<message_prefix>',
'<JSON object>')``, an :class:`~walrelay.model.Event` whose

- ``route.topic`` comes from ``topic`` (a template over ``{routed_by}`` -- the
  value of the ``route_by`` column, ``aggregate_type`` by default -- and any
  other column, default ``{routed_by}.events``), or from ``topic_regex`` /
  ``topic_replacement`` applied to the ``route_by`` value;
- ``route.key`` is the ``key`` column (``aggregate_id``), and so is the
  scheduler's grouping key: one aggregate's events are delivered in commit
  order, different aggregates in parallel;
- ``route.value`` is the ``payload`` column as JSON (a jsonb column arrives as
  the JSON value itself, never as a string, every number as PostgreSQL printed
  it: :mod:`walrelay.exact_json`), or ``{"payload": ..., <col>:
  ...}`` with ``envelope_fields``; ``None`` (a tombstone) for a NULL payload
  when ``tombstone_on_empty`` is on;
- ``route.headers`` are the ``headers`` columns (default ``id`` as
  ``outbox_id``, ``event_type``, ``aggregate_type``), as text.

Broker sinks (Kafka, NATS, Redis, RabbitMQ) send ``route`` as it is. Sinks
without topics (file, stdout, webhook) send ``body``, which for a routed event
is the routed envelope::

    {"id": "<commit_lsn>/<seq>", "op": "insert", "table": "public.outbox",
     "topic": "order.events", "key": "42", "payload": {...},
     "headers": {"outbox_id": "17", "event_type": "OrderCreated", ...},
     "tombstone": false, "commit_lsn": "0/16B3748", "xid": 735,
     "committed_at": "..."}

(``"op": "message"`` and ``"table": null`` for a table-less event; its
``outbox_id`` header is absent since there is no row.)

Events of other tables, and messages with other prefixes, pass unchanged.
UPDATE, DELETE and TRUNCATE of the outbox table are not events (outbox rows
are append-only; old partitions are dropped, never deleted): ``other_ops:
skip`` (default) leaves them out with a warning once per operation,
``deliver`` passes them on unrouted. A table-less message that is not a JSON
object with the key field is passed on unrouted with a warning, never dropped.
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any, Final

import orjson

from walrelay import exact_json
from walrelay.config import OutboxRouterConfig
from walrelay.errors import ConfigError
from walrelay.model import Event, Route
from walrelay.pipeline.envelope import KEY_SEPARATOR, encode_json
from walrelay.sinks.common import clean_topic

__all__ = ["OutboxRouter"]

log = logging.getLogger("walrelay.pipeline.outbox_router")

_KEY_PREFIX: Final = "outbox" + KEY_SEPARATOR


def _text(value: Any) -> str:
    """A column value as header/key text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return encode_json(value).decode()


class OutboxRouter:
    """Routes one destination's outbox events; see the module docstring."""

    def __init__(self, config: OutboxRouterConfig, *, destination: str = "") -> None:
        self.config = config
        self.destination = destination
        self.table = config.table
        self.message_prefix = config.message_prefix
        self._fields: list[str] = []
        try:
            for _, field, spec, conversion in string.Formatter().parse(config.topic):
                if field is None:
                    continue
                if not field.isidentifier() or spec or conversion:
                    raise ConfigError(
                        f"destination {destination}: router topic {config.topic!r}: "
                        f"unsupported field {{{field}}}",
                        fix="use plain column names in braces, e.g. '{routed_by}.events' or "
                        "'{aggregate_type}.{event_type}'",
                    )
                self._fields.append(field)
        except ValueError as e:
            raise ConfigError(
                f"destination {destination}: router topic {config.topic!r} is not a valid "
                f"template ({e})",
                fix="use column names in braces; write '{{' for a literal brace",
            ) from None
        self._regex = re.compile(config.topic_regex) if config.topic_regex else None
        self._warned: set[str] = set()
        self.routed = 0
        self.skipped = 0

    # -- the hot path -----------------------------------------------------------

    def route(self, event: Event) -> Event | None:
        """The event this destination gets for ``event``; None: none (skipped)."""
        op = event.op
        if event.table == self.table:
            if op == "insert":
                env = event.envelope()
                record = env.get("record")
                if isinstance(record, dict):
                    return self._routed(event, env, record)
            return self._other_op(event)
        if op == "message":
            env = event.envelope()
            if env.get("prefix") != self.message_prefix:
                return event
            fields = self._message_fields(env)
            if fields is None:
                return event
            return self._routed(event, env, fields)
        return event

    # -- helpers ------------------------------------------------------------------

    def _other_op(self, event: Event) -> Event | None:
        deliver = self.config.other_ops == "deliver"
        if event.op not in self._warned:
            self._warned.add(event.op)
            log.warning(
                "destination %s: %s on outbox table %s is not an outbox event; %s "
                "(router.other_ops: %s; logged once)",
                self.destination,
                event.op.upper(),
                self.table,
                "delivering it unrouted" if deliver else "skipping it",
                self.config.other_ops,
            )
        if deliver:
            return event
        self.skipped += 1
        return None

    def _message_fields(self, env: dict[str, Any]) -> dict[str, Any] | None:
        content = env.get("content")
        problem = ""
        fields: Any = None
        if env.get("content_encoding") != "utf-8" or not isinstance(content, str):
            problem = "its content is not UTF-8 text"
        else:
            try:
                fields = exact_json.loads(content)
            except orjson.JSONDecodeError:
                problem = "its content is not JSON"
        if not problem and not isinstance(fields, dict):
            problem = "its content is not a JSON object"
        if not problem and self.config.key not in fields:
            problem = f"it has no {self.config.key!r} field"
        if problem:
            log.warning(
                "destination %s: outbox message %s (prefix %s) cannot be routed: %s; "
                "delivering it unrouted",
                self.destination,
                env.get("id"),
                self.message_prefix,
                problem,
            )
            return None
        assert isinstance(fields, dict)
        return fields

    def _topic(self, fields: dict[str, Any]) -> str:
        cfg = self.config
        value = fields.get(cfg.route_by)
        routed_by = "" if value is None else clean_topic(_text(value))
        regex = self._regex
        if regex is not None:
            m = regex.fullmatch(routed_by)
            if m is not None:
                assert cfg.topic_replacement is not None
                return m.expand(cfg.topic_replacement)
        values: dict[str, str] = {}
        for name in self._fields:
            if name == "routed_by":
                values[name] = routed_by
            else:
                v = fields.get(name)
                values[name] = "" if v is None else clean_topic(_text(v))
        return cfg.topic.format(**values)

    def _routed(self, event: Event, env: dict[str, Any], fields: dict[str, Any]) -> Event:
        cfg = self.config
        topic = self._topic(fields)
        key_value = fields.get(cfg.key)
        key = None if key_value is None else _text(key_value)
        key_json = encode_json(key)
        payload = fields.get(cfg.payload)
        tombstone = payload is None and cfg.tombstone_on_empty
        headers: dict[str, str] = {}
        for column, name in cfg.headers.items():
            v = fields.get(column)
            if v is not None:
                headers[name] = _text(v)
        body: dict[str, Any] = {
            "id": env.get("id"),
            "op": event.op,
            "table": env.get("table"),
            "topic": topic,
            "key": orjson.Fragment(key_json),
            "payload": payload,
            "headers": headers,
            "tombstone": tombstone,
            "commit_lsn": env.get("commit_lsn"),
            "xid": env.get("xid"),
            "committed_at": env.get("committed_at"),
        }
        value: bytes | None
        if tombstone:
            value = None
        elif cfg.envelope_fields:
            wrapped = {"payload": payload}
            for column in cfg.envelope_fields:
                wrapped[column] = fields.get(column)
                body[column] = fields.get(column)
            value = encode_json(wrapped)
        else:
            value = encode_json(payload)
        group = _KEY_PREFIX + topic + KEY_SEPARATOR
        group += "\x00" if key is None else key.replace(KEY_SEPARATOR, "\x00E")
        self.routed += 1
        return Event(
            commit_lsn=event.commit_lsn,
            seq=event.seq,
            op=event.op,
            table=event.table,
            keys=(group,),
            body=encode_json(body),
            xid=event.xid,
            committed_at=event.committed_at,
            route=Route(topic, key, value, tuple(headers.items())),
            key_json=key_json,
        )
