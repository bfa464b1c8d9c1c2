"""Kafka Connect schemas of ``format: debezium`` with ``debezium: {schemas.enable: true}``.

What JsonConverter writes with ``schemas.enable=true``: every key and value is
``{"schema": <Connect schema>, "payload": <the event>}``. The schemas follow
Debezium's PostgreSQL connector (checked against real Debezium 3.6.1 output,
tests/data/debezium/golden-schemas.jsonl): the envelope
``<prefix>.<schema>.<table>.Envelope`` (version 2) with ``before``/``after``
structs ``<...>.Value``, the ``source`` and ``transaction`` blocks, ``op`` and
the timestamps; the key struct ``<...>.Key``; each column's type and semantic
name for the connector's defaults and the ``decimal``/``binary``/``time``
options (``io.debezium.time.Date``, ``org.apache.kafka.connect.data.Decimal``
with ``scale``, ...). A consumer -- ``walrelay worker`` with ``format:
debezium`` included -- can so tell a numeric's bytes from a bytea's.

Kept differences: a column is ``optional`` unless it is in the replica
identity (pgoutput does not say which columns are NOT NULL); enum columns are
plain strings (no ``io.debezium.data.Enum`` with ``allowed``: the envelope
does not know an enum's labels) and a domain is a string; columns a transform
added are typed from their JSON value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from psycopg.postgres import types as _pg_types

from walrelay.format_config import DebeziumOptions
from walrelay.model import Relation

__all__ = ["MESSAGE_KEY", "MESSAGE_VALUE", "SchemaBook"]

_ELEMENT_OF: Final = {t.array_oid: t.oid for t in _pg_types if t.array_oid}
_UNSUPPORTED: Final = frozenset({601, 602, 603, 604, 628, 718})

_SOURCE: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.data.Enum",
            "version": 1,
            "parameters": {
                "allowed": "true,first,first_in_data_collection,last_in_data_collection,"
                "last,false,incremental"
            },
            "default": "false",
            "field": "snapshot",
        },
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
        {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"},
        {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"},
        {"type": "int64", "optional": True, "field": "xmin"},
        {"type": "string", "optional": True, "field": "origin"},
        {"type": "int64", "optional": True, "field": "origin_lsn"},
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
    "version": 1,
    "field": "source",
}

_TRANSACTION: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}

_TIMES: Final = [
    {"type": "string", "optional": False, "field": "op"},
    {"type": "int64", "optional": True, "field": "ts_ms"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
]

MESSAGE_KEY: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [{"type": "string", "optional": True, "field": "prefix"}],
    "optional": False,
    "name": "io.debezium.connector.postgresql.MessageKey",
    "version": 1,
}

MESSAGE_VALUE: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [
        _TIMES[0],
        _TIMES[1],
        _SOURCE,
        _TRANSACTION,
        {
            "type": "struct",
            "fields": [
                {"type": "string", "optional": True, "field": "prefix"},
                {"type": "bytes", "optional": True, "field": "content"},
            ],
            "optional": False,
            "name": "io.debezium.connector.postgresql.Message",
            "version": 1,
            "field": "message",
        },
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.MessageValue",
    "version": 1,
}


def _named(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "name": name, "version": 1, **extra}


def _decimal(scale: int, precision: int | None) -> dict[str, Any]:
    params = {"scale": str(scale)}
    if precision is not None:
        params["connect.decimal.precision"] = str(precision)
    return _named("bytes", "org.apache.kafka.connect.data.Decimal", parameters=params)


_VARIABLE_DECIMAL: Final = _named(
    "struct",
    "io.debezium.data.VariableScaleDecimal",
    fields=[
        {"type": "int32", "optional": False, "field": "scale"},
        {"type": "bytes", "optional": False, "field": "value"},
    ],
    doc="Variable scaled decimal",
)
_POINT: Final = _named(
    "struct",
    "io.debezium.data.geometry.Point",
    fields=[
        {"type": "double", "optional": False, "field": "x"},
        {"type": "double", "optional": False, "field": "y"},
        {"type": "bytes", "optional": True, "field": "wkb"},
        {"type": "int32", "optional": True, "field": "srid"},
    ],
    doc="Geometry (POINT)",
)
_PLAIN: Final[dict[int, str]] = {16: "boolean", 21: "int16", 23: "int32", 20: "int64", 26: "int64"}
_PLAIN.update({700: "float", 701: "double"})
_STRING_NAMED: Final = {
    1184: "io.debezium.time.ZonedTimestamp",
    1266: "io.debezium.time.ZonedTime",
    2950: "io.debezium.data.Uuid",
    114: "io.debezium.data.Json",
    3802: "io.debezium.data.Json",
    142: "io.debezium.data.Xml",
}


def _scalar(oid: int, typmod: int, options: DebeziumOptions) -> dict[str, Any]:
    """The Connect schema of a non-array column (no ``optional``/``field`` yet)."""
    if oid in _PLAIN:
        return {"type": _PLAIN[oid]}
    if oid in _STRING_NAMED:
        return _named("string", _STRING_NAMED[oid])
    if oid == 1560 and typmod == 1:
        return {"type": "boolean"}
    if oid in (1560, 1562):
        length = typmod if typmod > 0 else 2**31 - 1
        return _named("bytes", "io.debezium.data.Bits", parameters={"length": str(length)})
    mode = options.decimal_handling
    if oid in (1700, 790):
        if mode != "precise":
            return {"type": "string" if mode == "string" else "double"}
        if oid == 790:
            return _decimal(2, None)
        if typmod < 4:
            return dict(_VARIABLE_DECIMAL)
        return _decimal((typmod - 4) & 0xFFFF, ((typmod - 4) >> 16) & 0xFFFF)
    if oid == 17:
        return {"type": "bytes" if options.binary_handling == "bytes" else "string"}
    connect = options.time_precision == "connect"
    precision = 6 if typmod < 0 else typmod
    if oid == 1082:
        name = "org.apache.kafka.connect.data.Date" if connect else "io.debezium.time.Date"
        return _named("int32", name)
    if oid == 1083:
        if connect:
            return _named("int32", "org.apache.kafka.connect.data.Time")
        if precision <= 3:
            return _named("int32", "io.debezium.time.Time")
        return _named("int64", "io.debezium.time.MicroTime")
    if oid == 1114:
        if connect:
            return _named("int64", "org.apache.kafka.connect.data.Timestamp")
        if precision <= 3:
            return _named("int64", "io.debezium.time.Timestamp")
        return _named("int64", "io.debezium.time.MicroTimestamp")
    if oid == 1186:
        return _named("int64", "io.debezium.time.MicroDuration")
    if oid == 600:
        return dict(_POINT)
    return {"type": "string"}


def column_schema(oid: int, typmod: int, options: DebeziumOptions) -> dict[str, Any] | None:
    """A column's Connect schema; None for the types Debezium leaves out."""
    element = _ELEMENT_OF.get(oid)
    if element is not None:
        if element in _UNSUPPORTED:
            return None
        return {"type": "array", "items": {**_scalar(element, typmod, options), "optional": True}}
    if oid in _UNSUPPORTED:
        return None
    return _scalar(oid, typmod, options)


def _guess(value: Any) -> dict[str, Any]:
    """A column the table does not have (a transform added it), typed from its value."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "int64"}
    if isinstance(value, float):
        return {"type": "double"}
    return {"type": "string"}


def _avro(part: str) -> str:
    """Debezium's schema names are Avro names: other characters become ``_``."""
    out = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in part)
    return out if out and not out[0].isdigit() else "_" + out


class SchemaBook:
    """The schemas of one destination's events, built once per table and column set."""

    def __init__(self, options: DebeziumOptions, prefix: str) -> None:
        self._options = options
        self._prefix = _avro(prefix)
        self._columns: dict[tuple[int, str], dict[str, Any] | None] = {}
        self._values: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._keys: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _base(self, table: str) -> str:
        schema, _, name = table.partition(".")
        return f"{self._prefix}.{_avro(schema)}.{_avro(name)}"

    def _field(
        self, relation: Relation | None, name: str, value: Any, *, optional: bool
    ) -> dict[str, Any]:
        column = None
        if relation is not None:
            column = next((c for c in relation.columns if c.name == name), None)
        schema: dict[str, Any] | None
        if column is None:
            schema = _guess(value)
        else:
            cache = (column.type_oid, str(column.type_modifier))
            if cache not in self._columns:
                self._columns[cache] = column_schema(
                    column.type_oid, column.type_modifier, self._options
                )
            schema = self._columns[cache] or {"type": "string"}
        return {**schema, "optional": optional, "field": name}

    def envelope(
        self,
        table: str,
        relation: Relation | None,
        rows: Iterable[Mapping[str, Any] | None],
        key_columns: Iterable[str] | None,
    ) -> dict[str, Any]:
        """The value schema of ``table``'s change events whose rows are ``rows``;
        the key's columns are the required ones (None: the replica identity's,
        unless it is FULL, which flags every column)."""
        if key_columns is not None:
            required = frozenset(key_columns)
        elif relation is not None and relation.replica_identity != "f":
            required = frozenset(c.name for c in relation.columns if c.is_key)
        else:
            required = frozenset()
        sample: dict[str, Any] = {}
        for row in rows:
            if row:
                for name, value in row.items():
                    if sample.get(name) is None:
                        sample[name] = value
        if relation is not None and not sample:
            sample = {c.name: None for c in relation.columns if c.type_oid not in _UNSUPPORTED}
        cache = (table, relation, required, tuple(sample), tuple(map(type, sample.values())))
        found = self._values.get(cache)
        if found is not None:
            return found
        base = self._base(table)
        fields = [
            self._field(relation, n, v, optional=n not in required) for n, v in sample.items()
        ]
        row = {"type": "struct", "fields": fields, "optional": True, "name": f"{base}.Value"}
        envelope = {
            "type": "struct",
            "fields": [
                {**row, "field": "before"},
                {**row, "field": "after"},
                _SOURCE,
                _TRANSACTION,
                *_TIMES,
            ],
            "optional": False,
            "name": f"{base}.Envelope",
            "version": 2,
        }
        self._values[cache] = envelope
        return envelope

    def key(self, table: str, relation: Relation | None, key: Mapping[str, Any]) -> dict[str, Any]:
        """The key schema of ``table`` for a key object with ``key``'s columns."""
        cache = (table, relation, tuple(key))
        found = self._keys.get(cache)
        if found is None:
            fields = [self._field(relation, n, v, optional=False) for n, v in key.items()]
            found = {
                "type": "struct",
                "fields": fields,
                "optional": False,
                "name": f"{self._base(table)}.Key",
            }
            self._keys[cache] = found
        return found
