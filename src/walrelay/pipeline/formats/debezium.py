"""``format: debezium``: the envelope of Debezium's PostgreSQL connector.

What the connector emits with ``JsonConverter`` and ``schemas.enable=false``
(checked against real Debezium: tests/integration/test_formats_golden.py)::

    value: {"before", "after", "source": {"version", "connector": "postgresql",
            "name", "ts_ms", "snapshot", "db", "sequence", "ts_us", "ts_ns",
            "schema", "table", "txId", "lsn", "xmin", "origin", "origin_lsn"},
            "transaction", "op": c|u|d|r|t, "ts_ms", "ts_us", "ts_ns"}
    key:   {"<pk column>": value, ...}  (null for a truncate)

A logical decoding message is ``{"op": "m", "ts_ms", "source", "transaction",
"message": {"prefix", "content": <base64>}}`` with the key ``{"prefix"}``.
Column values: :mod:`walrelay.pipeline.formats.debezium_values`.

Differences kept on purpose (README "format: debezium"): ``source.lsn`` and
``sequence`` carry the commit LSN (walrelay's events know their transaction's
commit, not each change's own WAL position); an UPDATE that changes the key is
one ``u`` event with the old key in ``before`` (one change keeps one event id);
every snapshot row has ``snapshot: "true"`` (the snapshot is read in parallel
chunks, so no row is known to be a table's first or last when it is built);
backfill rows have ``"incremental"``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from walrelay.exact_json import JSON_TYPE_OIDS
from walrelay.format_config import DebeziumOptions
from walrelay.model import Event, Relation, Rendering
from walrelay.pipeline.envelope import encode_json
from walrelay.pipeline.formats.common import decode_envelope, rendered
from walrelay.pipeline.formats.debezium_schema import MESSAGE_KEY, MESSAGE_VALUE, SchemaBook
from walrelay.pipeline.formats.debezium_values import (
    UNSUPPORTED_OIDS,
    ValueConverter,
    value_converter,
)
from walrelay.pipeline.transaction_metadata import TransactionOrder

__all__ = ["DebeziumFormatter"]

_OPS: Final = {"insert": "c", "update": "u", "delete": "d", "read": "r", "truncate": "t"}
_BYTEA_OID: Final = 17


class _Table:
    """Per-relation plan: each column's converter, in column order."""

    __slots__ = ("columns", "dropped", "json", "placeholder", "relation")

    def __init__(self, relation: Relation, options: DebeziumOptions) -> None:
        self.relation = relation
        self.columns: dict[str, ValueConverter] = {}
        self.placeholder: dict[str, Any] = {}
        self.dropped = frozenset(c.name for c in relation.columns if c.type_oid in UNSUPPORTED_OIDS)
        # Whether a row can hold a number orjson would not read back as written.
        self.json = any(c.type_oid in JSON_TYPE_OIDS for c in relation.columns)
        text = options.unavailable_value_placeholder
        for col in relation.columns:
            if col.type_oid in UNSUPPORTED_OIDS:
                continue
            self.columns[col.name] = value_converter(col.type_oid, col.type_modifier, options)
            if col.type_oid == _BYTEA_OID:
                data = text.encode()
                self.placeholder[col.name] = (
                    data.hex()
                    if options.binary_handling == "hex"
                    else base64.b64encode(data).decode()
                )
            else:
                self.placeholder[col.name] = text


class DebeziumFormatter:
    """Renders walrelay envelopes as Debezium change events (module docstring)."""

    def __init__(
        self,
        options: DebeziumOptions,
        *,
        name: str,
        db: str,
        version: str,
        relation: Callable[[str], Relation | None],
        clock: Callable[[], int] = time.time_ns,
        transformed: bool = True,
    ) -> None:
        self._options = options
        # Bodies a transform step wrote may hold exact numbers in any column
        # (a cast to number, a python hook); else only json columns can.
        self._transformed = transformed
        self._name = options.name or name
        self._db = db
        self._version = version
        self._relation = relation
        self._clock = clock
        self._tables: dict[str, _Table] = {}
        self._source_key: tuple[Any, ...] | None = None
        self._source_value: dict[str, Any] = {}
        # schemas.enable: the Connect schemas (debezium_schema.py).
        self._schemas = SchemaBook(options, self._name) if options.schemas_enable else None

    def _table(self, table: str) -> _Table | None:
        relation = self._relation(table)
        if relation is None:
            return None
        plan = self._tables.get(table)
        if plan is None or plan.relation is not relation:
            plan = _Table(relation, self._options)
            self._tables[table] = plan
        return plan

    def render(
        self, event: Event, snapshot: str, transaction: TransactionOrder | None = None
    ) -> Event:
        """``event`` (walrelay's envelope in its body) as Debezium's event."""
        first = self._table(event.table) if event.table else None
        exact = self._transformed or first is None or first.json
        env = decode_envelope(event.body, exact=exact)
        op = event.op
        if op == "message":
            return self._message(event, env, transaction)
        if op == "begin" or op == "end":
            return self._transaction(event, env)
        tables = env.get("tables") if op == "truncate" else None
        table = tables[0] if tables else (env.get("table") or event.table)
        schema, _, name = table.partition(".")
        plan = self._table(table)
        source = self._source(event, snapshot if op == "read" else "false", schema, name)
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        key: Any = None
        old_key: Any = None
        if op != "truncate":
            converters = plan.columns if plan is not None else {}
            record = env.get("record")
            old = env.get("old")
            if isinstance(record, dict):
                after = _row(record, converters, plan, env.get("unchanged") or (), fill=False)
            if isinstance(old, dict):
                # The old key (DEFAULT: other columns null) or the whole old row (FULL).
                before = _row(old, converters, plan, (), fill=True)
            key_obj = env.get("key")
            if isinstance(key_obj, dict):
                key = _convert(key_obj, converters)
                if op == "update" and before is not None:
                    old_key = {k: before.get(k) for k in key}
                    if old_key == key:
                        old_key = None
        now = self._clock()
        value = {
            "before": before,
            "after": after,
            "source": source,
            "transaction": _transaction_block(transaction),
            "op": _OPS.get(op, op),
            "ts_ms": now // 1_000_000,
            "ts_us": now // 1_000,
            "ts_ns": now,
        }
        if self._schemas is not None:
            relation = plan.relation if plan is not None else None
            key_columns = tuple(key) if isinstance(key, dict) else None
            schema = self._schemas.envelope(table, relation, (before, after), key_columns)
            value = {"schema": schema, "payload": value}
            if key is not None:
                key = {"schema": self._schemas.key(table, relation, key), "payload": key}
            if old_key is not None:
                key_schema = self._schemas.key(table, relation, old_key)
                old_key = {"schema": key_schema, "payload": old_key}
        rendering = Rendering(
            key=None if key is None else encode_json(key),
            old_key=None if old_key is None else encode_json(old_key),
            tables=tuple(tables) if tables else (),
        )
        return rendered(event, encode_json(value), rendering)

    def _transaction(self, event: Event, env: Mapping[str, Any]) -> Event:
        """A begin/end event as a record of Debezium's transaction topic."""
        tx_id = env.get("transaction_id") or ""
        value = {
            "status": "BEGIN" if event.op == "begin" else "END",
            "id": tx_id,
            "event_count": env.get("event_count"),
            "data_collections": env.get("data_collections"),
            "ts_ms": self._source(event, "false", "", "")["ts_ms"],
        }
        rendering = Rendering(key=encode_json({"id": tx_id}))
        return rendered(event, encode_json(value), rendering)

    def _message(
        self, event: Event, env: Mapping[str, Any], transaction: TransactionOrder | None
    ) -> Event:
        prefix = env.get("prefix") or ""
        content = env.get("content") or ""
        if env.get("content_encoding") == "hex" and content.startswith("\\x"):
            data = bytes.fromhex(content[2:])
        else:
            data = content.encode("utf-8", "surrogateescape")
        now = self._clock()
        value = {
            "op": "m",
            "ts_ms": now // 1_000_000,
            "source": self._source(event, "false", "", ""),
            "transaction": _transaction_block(transaction),
            "message": {"prefix": prefix, "content": base64.b64encode(data).decode()},
        }
        key: dict[str, Any] = {"prefix": prefix}
        if self._schemas is not None:
            value = {"schema": MESSAGE_VALUE, "payload": value}
            key = {"schema": MESSAGE_KEY, "payload": key}
        rendering = Rendering(key=encode_json(key))
        return rendered(event, encode_json(value), rendering)

    def _source(self, event: Event, snapshot: str, schema: str, table: str) -> dict[str, Any]:
        """The source block; the same (never mutated) dict for the events of one
        transaction, table and snapshot kind."""
        cache_key = (event.commit_lsn, event.xid, snapshot, schema, table)
        if cache_key == self._source_key:
            return self._source_value
        self._source_key = cache_key
        self._source_value = self._make_source(event, snapshot, schema, table)
        return self._source_value

    def _make_source(self, event: Event, snapshot: str, schema: str, table: str) -> dict[str, Any]:
        at = event.committed_at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        delta = at - _EPOCH
        us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        lsn = event.commit_lsn
        return {
            "version": self._version,
            "connector": "postgresql",
            "name": self._name,
            "ts_ms": us // 1000,
            "snapshot": snapshot,
            "db": self._db,
            "sequence": f'["{lsn}","{lsn}"]',
            "ts_us": us,
            "ts_ns": us * 1000,
            "schema": schema,
            "table": table,
            "txId": event.xid or None,  # 0: a non-transactional message
            "lsn": lsn,
            "xmin": None,
            "origin": None,
            "origin_lsn": None,
        }


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _transaction_block(order: TransactionOrder | None) -> dict[str, Any] | None:
    if order is None:
        return None
    return {"id": order[0], "total_order": order[1], "data_collection_order": order[2]}


def _convert(values: Mapping[str, Any], converters: Mapping[str, ValueConverter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        conv = converters.get(name)
        out[name] = value if value is None or conv is None else conv(value)
    return out


def _row(
    values: Mapping[str, Any],
    converters: Mapping[str, ValueConverter],
    plan: _Table | None,
    unchanged: Any,
    *,
    fill: bool,
) -> dict[str, Any]:
    """A row in the table's column order. A column the server did not send is
    Debezium's placeholder when it is unchanged TOAST, null when ``fill`` (the
    other columns of an old key), else left out (a transform removed it);
    columns a transform added come last."""
    if plan is None:
        return _convert(values, converters)
    out: dict[str, Any] = {}
    for name, conv in plan.columns.items():
        if name in values:
            value = values[name]
            out[name] = None if value is None else conv(value)
        elif name in unchanged:
            out[name] = plan.placeholder[name]
        elif fill:
            out[name] = None
    for name, value in values.items():
        if name not in out and name not in plan.dropped:
            out[name] = value
    return out
