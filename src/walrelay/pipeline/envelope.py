"""The JSON event envelope: one decoded change -> one :class:`~walrelay.model.Event`.

Envelope of a row change (``insert``, ``update``, ``delete``; ``read`` for
snapshot rows)::

    {"id": "00000000016B3748/3", "op": "update", "table": "public.users",
     "key": {"id": 7}, "record": {"id": 7, "name": "Ann", ...},
     "old": {"id": 7} | {...whole old row...} | null,
     "commit_lsn": "0/16B3748", "xid": 735,
     "committed_at": "2024-01-02T03:04:05.123456+00:00",
     "unchanged": ["big_col"]}            # only when not empty

- ``key``: the grouping key columns (the ``key_columns`` override for the
  table, else the columns pgoutput flags as replica identity) taken from the
  new row (insert/update) or the old one (delete); null when the table has no
  key at all.
- ``record``: the new row; null for delete.
- ``old``: what the server sent of the old row: the replica identity columns
  (``old_kind`` 'K': an UPDATE that changed the key, or a DELETE) or the whole
  row (``'O'``, REPLICA IDENTITY FULL); otherwise null.
- ``unchanged``: TOASTed columns an UPDATE did not touch and the server did
  not resend. They are left out of ``record`` (never null: null is a value).
- ``not_utf8`` (only when not empty): columns whose value's bytes are not
  valid UTF-8 (a ``SQL_ASCII`` database stores any bytes): the value, in
  ``record``, ``old`` and ``key``, is ``"\\x<hex of the bytes>"``
  (:class:`walrelay.source.types.NotUtf8`).

``truncate`` has ``"tables": ["public.a", ...], "cascade", "restart_identity"``
and null ``table``/``key``/``record``/``old``. ``message`` (logical decoding
message) has null ``table``/``key``/``record``/``old`` plus ``prefix``,
``content`` and ``content_encoding``: ``content`` is the payload as a string
when it is valid UTF-8 (``"utf-8"``; JSON payloads stay a *string*, so
consumers see exactly the bytes that were emitted), else ``"\\x<hex>"``
(``"hex"``).

JSON representation of column values. The rule: PostgreSQL casts every
value back to one equal to the source's (``tests/integration/test_fidelity.py``
proves it against ``test_decoding``); where a JSON value cannot hold it, the
value is PostgreSQL's text as a string. Values are printed under
:data:`walrelay.source.types.SESSION_SETTINGS`, whatever the database or role sets.

- integers -> numbers (every digit, also beyond 2^53);
- numeric -> JSON *string* with every digit (``"12345678901234567890.5"``,
  ``"NaN"``, ``"Infinity"``): a JSON number would be read as a double by
  most consumers;
- float4/float8 -> JSON number, the shortest text that reads back exactly
  (``extra_float_digits=3``); NaN/Infinity/-Infinity (JSON has none) -> the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` as PostgreSQL spells them;
- json/jsonb -> the document itself, its text spliced in unparsed (numbers
  keep every digit, ``json`` keeps duplicate keys and key order; CR/LF
  between tokens become spaces); a document nested deeper than
  :data:`walrelay.source.types.MAX_JSON_DEPTH` -> its text as a JSON string;
- bytea -> ``"\\x00ff"``, the way PostgreSQL prints it;
- timestamptz -> ISO 8601 with offset (``"2024-01-02T03:04:05+00:00"``),
  timestamp -> ISO 8601 without offset, date -> ``"2024-01-02"``, time and
  timetz -> ``"03:04:05"`` / ``"03:04:05+05:30"``; values Python cannot hold
  (``infinity``, BC, year > 9999, ``24:00:00``) stay PostgreSQL's text;
- interval -> ISO 8601 duration as PostgreSQL prints it with
  ``IntervalStyle=iso_8601`` (``"P1Y2M3DT4H5M6.5S"``, ``"P-1Y-2M3DT-4H"``):
  years/months, days and time stay apart, as ``::interval`` reads them back;
- uuid -> string; arrays -> arrays (nested; null elements null), except an
  array whose lower bound is not 1 -> PostgreSQL's text (``"[0:2]={7,8,9}"``);
- money -> its text under ``lc_monetary=C`` (``"$1,234.56"``); everything
  else (enums, composites, ranges, inet, geometric, ...) -> the text
  PostgreSQL printed.

``Event.keys`` (internal, for the scheduler): ``"<schema.table>\\x1f<key>"``
where ``<key>`` is the text PostgreSQL printed for each key column, joined by
``\\x1f`` (SQL NULL is ``\\x00``, a ``\\x1f`` inside a value is ``\\x00E``, a
value the server did not send is ``\\x00?``); a table without key columns has
the single key ``"<schema.table>"`` (its events are serialised). An UPDATE
that changed the key has two keys ``(new, old)``; ``truncate`` has none (a
barrier); ``message`` has ``("message\\x1f<prefix>",)``.

``Event.key_json`` is the envelope's ``"key"`` value as the bytes in the
body (both paths encode it once and splice it in), so a sink that needs the
key does not parse the body.

Key columns must be in the replica identity for DELETEs (and key-changing
UPDATEs) to carry their values: with a ``key_columns`` override naming columns
outside a 'K' old tuple, a DELETE's key values are unknown (``\\x00?``) -- use
REPLICA IDENTITY FULL or key columns covered by the replica identity.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any, Final

import orjson

from walrelay.errors import ConfigError, DecodeError
from walrelay.exact_json import JsonNumber, JsonObject, as_base_type, object_text
from walrelay.model import (
    UNCHANGED_TOAST,
    Begin,
    Change,
    Event,
    Lsn,
    RawTuple,
    RawValue,
    Relation,
    format_event_id,
    format_lsn,
)
from walrelay.source.types import Converter, NotUtf8, TypeRegistry
from walrelay.speedups import encode_insert_events as _c_encode_insert_events
from walrelay.speedups import encode_object as _c_encode_object

__all__ = ["KEY_SEPARATOR", "EnvelopeBuilder", "encode_json"]

KEY_SEPARATOR: Final = "\x1f"
_NULL_PART: Final = "\x00"
_UNKNOWN_PART: Final = "\x00?"
_ESCAPED_SEPARATOR: Final = "\x00E"
_NULL_JSON: Final = b"null"
# An event id's sequence as format_event_id pads it (SEQ_DIGITS), made once for
# the first ones: bytes %-formatting costs ~0.25 us per change on the hot path.
_PADDED_SEQ_LIMIT: Final = 4096
_PADDED_SEQS: Final = tuple(b"%010d" % i for i in range(_PADDED_SEQ_LIMIT))

# At most this many inserts are built in one step (inserts_from_wire): the
# events a full buffer receives beyond its bound before the reader waits.
_RUN_LIMIT: Final = 256

_FLOAT_OIDS: Final = frozenset({700, 701})
_FLOAT_ARRAY_OIDS: Final = frozenset({1021, 1022})
_TIMETZ_OID: Final = 1266
_TIMETZ_ARRAY_OID: Final = 1270
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


# -- JSON encoding ------------------------------------------------------------


# Subclasses of str, int, dict and list go to _default: a JsonObject must not be
# written as the plain dict it also is.
_SUBCLASSES: Final = orjson.OPT_PASSTHROUGH_SUBCLASS


def _default(value: Any) -> Any:
    """orjson ``default=``: the types orjson does not serialise by itself."""
    if isinstance(value, JsonNumber):  # a json column's number, read back exactly
        return orjson.Fragment(value.text)
    if isinstance(value, JsonObject):  # a json column's object with a key twice
        return orjson.Fragment(object_text(value, _default))
    if isinstance(value, Decimal):
        return format(value, "f")  # every digit, never exponent notation
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return as_base_type(value)  # another subclass (OPT_PASSTHROUGH_SUBCLASS)


def _nonfinite(value: float) -> float | str:
    if value - value == 0.0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _sanitize(value: Any) -> Any:
    """Make what orjson refuses encodable without losing it (rare values only)."""
    if isinstance(value, JsonObject):
        return JsonObject([(k, _sanitize(v)) for k, v in value.pairs])
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        return orjson.Fragment(str(value))  # exact JSON number
    if isinstance(value, float):
        return _nonfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a json column
            return orjson.Fragment(json.dumps(value))  # escaped as \udXXX
        return value
    if isinstance(value, time) and value.tzinfo is not None:
        return value.isoformat()
    return value


def envelope_head(
    commit_lsn: Lsn, seq: int, op: str, xid: int, committed_at: Any
) -> dict[str, Any]:
    """The envelope's fields every event has, in their order, the others null."""
    return {
        "id": format_event_id(commit_lsn, seq),
        "op": op,
        "table": None,
        "key": None,
        "record": None,
        "old": None,
        "commit_lsn": format_lsn(commit_lsn),
        "xid": xid,
        "committed_at": committed_at,
    }


def message_content(content: bytes) -> tuple[str, str]:
    """A logical message's content and its ``content_encoding``: the text when
    it is UTF-8, else ``\\x`` and hex."""
    try:
        return content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return "\\x" + content.hex(), "hex"


def encode_json(value: Any) -> bytes:
    """Encode an envelope (or any converted values) as :class:`EnvelopeBuilder` does.

    orjson returns its bytes inside a buffer of at least 4 KiB; an event body
    lives in the buffers for a while, so it is copied to its exact size (about
    0.1 µs) instead of holding ~4 KiB per buffered event.
    """
    try:
        return memoryview(orjson.dumps(value, default=_default, option=_SUBCLASSES)).tobytes()
    except orjson.JSONEncodeError:
        pass
    try:
        return memoryview(
            orjson.dumps(_sanitize(value), default=_default, option=_SUBCLASSES)
        ).tobytes()
    except orjson.JSONEncodeError as exc:
        raise DecodeError(f"cannot encode a change as JSON: {exc}") from exc


# -- JSON-facing converters -----------------------------------------------------


def _map_nested(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return None if value is None else fn(value)


def _timetz_text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, time) else value


def _json_ready(oid: int, conv: Converter) -> Converter:
    """Wrap ``conv`` for the few types orjson would encode wrongly or refuse."""
    if oid in _FLOAT_OIDS:

        def floats(data: bytes) -> Any:
            value = conv(data)
            return value if value - value == 0.0 else _nonfinite(value)

        return floats
    if oid in _FLOAT_ARRAY_OIDS:
        return lambda data: _map_nested(conv(data), _nonfinite)
    if oid == _TIMETZ_OID:  # orjson refuses time objects with a tzinfo
        return lambda data: _timetz_text(conv(data))
    if oid == _TIMETZ_ARRAY_OID:
        return lambda data: _map_nested(conv(data), _timetz_text)
    return conv


# -- C fast path ------------------------------------------------------------------

# How the C encoder writes a built-in type's text value (see _speedups.c);
# every other type goes through its converter and orjson ('c').
_C_KINDS: Final = {
    21: "i",  # int2
    23: "i",  # int4
    20: "i",  # int8
    26: "i",  # oid
    1700: "n",  # numeric
    2950: "u",  # uuid
    16: "b",  # bool
    25: "s",  # text
    1043: "s",  # varchar
    1042: "s",  # bpchar
    19: "s",  # name
    1082: "d",  # date
    1114: "t",  # timestamp
    1184: "z",  # timestamptz
    1186: "s",  # interval: PostgreSQL's ISO 8601 text, as a string
    114: "j",  # json
    3802: "j",  # jsonb
}


def _json_text(conv: Converter) -> Callable[[bytes], bytes]:
    """Raw value -> the JSON text orjson writes for its converted value."""

    def encode(raw: bytes) -> bytes:
        return orjson.dumps(conv(raw), default=_default)

    return encode


class _CColumns:
    """What the C encoder needs for a list of columns (names, kinds, encoders)."""

    __slots__ = ("encoders", "indexes", "kinds", "names")

    def __init__(
        self,
        names: Sequence[str],
        oids: Sequence[int],
        fast: Sequence[Converter],
        types: TypeRegistry,
        indexes: tuple[int, ...] | None,
    ) -> None:
        self.names = tuple(orjson.dumps(n) + b":" for n in names)
        kinds = ["c" if types.is_registered(oid) else _C_KINDS.get(oid, "c") for oid in oids]
        self.kinds = "".join(kinds).encode()
        self.encoders = tuple(
            _json_text(conv) if kind == "c" else None
            for kind, conv in zip(kinds, fast, strict=True)
        )
        self.indexes = indexes


# -- per-relation plan ----------------------------------------------------------


class _Plan:
    __slots__ = (
        "c_insert",
        "c_key",
        "c_ops",
        "c_ri",
        "c_row",
        "fast",
        "key_idx",
        "key_in_ri",
        "key_names",
        "key_prefix",
        "names",
        "relation",
        "ri_fast",
        "ri_idx",
        "ri_names",
        "ri_safe",
        "safe",
        "single_key",
        "table",
        "version",
    )

    def __init__(
        self,
        relation: Relation,
        types: TypeRegistry,
        key_columns: Sequence[str] | None,
    ) -> None:
        self.relation = relation
        self.version = types.version
        self.table = relation.qualified_name
        cols = relation.columns
        self.names = tuple(c.name for c in cols)
        self.fast = tuple(_json_ready(c.type_oid, types.fast_converter(c.type_oid)) for c in cols)
        self.safe = tuple(_json_ready(c.type_oid, types.converter(c.type_oid)) for c in cols)
        self.ri_idx = relation.key_indexes
        self.ri_names = tuple(self.names[i] for i in self.ri_idx)
        self.ri_fast = tuple(self.fast[i] for i in self.ri_idx)
        self.ri_safe = tuple(self.safe[i] for i in self.ri_idx)
        if key_columns is None:
            self.key_idx = self.ri_idx
        else:
            index = {name: i for i, name in enumerate(self.names)}
            missing = [c for c in key_columns if c not in index]
            if missing:
                raise ConfigError(
                    f"key column(s) {', '.join(missing)} of {self.table} are not among the "
                    f"columns pgoutput sends ({', '.join(self.names)})",
                    fix="fix the table's key_columns, or add the column to the publication",
                )
            self.key_idx = tuple(index[c] for c in key_columns)
        self.key_names = tuple(self.names[i] for i in self.key_idx)
        self.key_in_ri = set(self.key_idx) <= set(self.ri_idx)
        self.key_prefix = self.table + KEY_SEPARATOR
        self.single_key = self.key_idx[0] if len(self.key_idx) == 1 else -1
        # The C encoder's view of the same columns, and the envelope's bytes
        # from the end of the id to the key, per op.
        oids = [c.type_oid for c in cols]
        self.c_row = _CColumns(self.names, oids, self.fast, types, None)
        self.c_key = _CColumns(
            self.key_names,
            [oids[i] for i in self.key_idx],
            [self.fast[i] for i in self.key_idx],
            types,
            self.key_idx,
        )
        self.c_ri = _CColumns(
            self.ri_names, [oids[i] for i in self.ri_idx], self.ri_fast, types, self.ri_idx
        )
        table_json = orjson.dumps(self.table)
        self.c_ops = {
            op: b'","op":"' + op.encode() + b'","table":' + table_json + b',"key":'
            for op in ("insert", "update", "delete", "read")
        }
        # What speedups.encode_insert_events needs to make inserts' events from the wire.
        self.c_insert = (
            self.c_row.names,
            self.c_row.kinds,
            self.c_row.encoders,
            self.c_key.names if self.key_names else None,
            self.c_key.kinds,
            self.c_key.encoders,
            self.key_idx,
            self.c_ops["insert"],
            self.key_prefix if self.key_idx else self.table,
            self.key_idx,
            len(cols),
            relation.oid,
        )


def _convert_slow(
    table: str, names: Sequence[str], safe: Sequence[Converter], row: Sequence[RawValue]
) -> tuple[dict[str, Any], list[str]]:
    if len(row) != len(names):
        raise DecodeError(
            f"{table}: a tuple has {len(row)} columns, its Relation message {len(names)}"
        )
    out: dict[str, Any] = {}
    unchanged: list[str] = []
    for name, conv, raw in zip(names, safe, row, strict=True):
        if raw is None:
            out[name] = None
        elif raw is UNCHANGED_TOAST:
            unchanged.append(name)
        else:
            try:
                out[name] = conv(raw)  # type: ignore[arg-type]
            except DecodeError as exc:
                raise DecodeError(f"{table}.{name}: {exc.message}", fix=exc.fix) from exc
    return out, unchanged


def _convert(
    table: str,
    names: Sequence[str],
    fast: Sequence[Converter],
    safe: Sequence[Converter],
    row: Sequence[RawValue],
) -> tuple[dict[str, Any], list[str]]:
    """Row -> (column dict, unchanged TOAST column names)."""
    try:
        # Fast converters raise on anything unusual -- including the
        # UNCHANGED_TOAST marker, which is not bytes -- and then the row is
        # redone value by value with the safe converters.
        return {
            n: None if v is None else c(v)  # type: ignore[arg-type]
            for n, c, v in zip(names, fast, row, strict=True)
        }, []
    except Exception:
        return _convert_slow(table, names, safe, row)


def _not_utf8_columns(*rows: dict[str, Any] | None) -> list[str]:
    """Columns whose value (in any of ``rows``) is a :class:`NotUtf8` hex string."""
    names: list[str] = []
    for row in rows:
        if row is not None:
            names.extend(n for n, v in row.items() if type(v) is NotUtf8 and n not in names)
    return names


def _key_part(raw: RawValue) -> str:
    if raw is None:
        return _NULL_PART
    if raw is UNCHANGED_TOAST:
        return _UNKNOWN_PART
    text = str(raw, "utf-8", "surrogateescape")  # type: ignore[arg-type]
    if KEY_SEPARATOR in text:
        return text.replace(KEY_SEPARATOR, _ESCAPED_SEPARATOR)
    return text


def _group_key(plan: _Plan, row: RawTuple | None, backup: RawTuple | None) -> str:
    """Scheduling key from raw text values; ``backup`` fills unsent (TOAST) values."""
    if not plan.key_idx:
        return plan.table
    if row is None:
        return plan.key_prefix + KEY_SEPARATOR.join(_UNKNOWN_PART for _ in plan.key_idx)
    i = plan.single_key
    if i >= 0:
        raw = row[i]
        if raw.__class__ is bytes:
            text = str(raw, "utf-8", "surrogateescape")
            if KEY_SEPARATOR not in text:
                return plan.key_prefix + text
    parts = []
    for i in plan.key_idx:
        raw = row[i]
        if raw is UNCHANGED_TOAST and backup is not None:
            raw = backup[i]
        parts.append(_key_part(raw))
    return plan.key_prefix + KEY_SEPARATOR.join(parts)


def _key_object(
    plan: _Plan, primary: dict[str, Any] | None, fallback: dict[str, Any] | None
) -> dict[str, Any] | None:
    if not plan.key_names:
        return None
    if primary is not None:
        try:
            return {n: primary[n] for n in plan.key_names}
        except KeyError:
            pass
    key: dict[str, Any] = {}
    for name in plan.key_names:
        if primary is not None and name in primary:
            key[name] = primary[name]
        elif fallback is not None and name in fallback:
            key[name] = fallback[name]
    return key


# -- builder --------------------------------------------------------------------


class EnvelopeBuilder:
    """Builds the default JSON envelope (module docstring) for each change.

    ``key_columns`` maps a qualified table name to the columns whose values
    are its key -- the primary key the engine looked up in the catalog, for
    REPLICA IDENTITY FULL tables (where pgoutput flags *every* column), or
    configured columns (the outbox's ``aggregate_id``). Tables not in it use
    the replica identity columns pgoutput flags.

    Per-relation work (column names, converters, key positions) is done once
    per Relation message: plans are cached by table OID and replaced when a
    new :class:`~walrelay.model.Relation` object (or a type registration)
    arrives.
    """

    def __init__(
        self,
        types: TypeRegistry,
        key_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._types = types
        self._key_columns: dict[str, tuple[str, ...]] = {
            table: tuple(cols) for table, cols in (key_columns or {}).items()
        }
        self._plans: dict[int, _Plan] = {}
        self._relations: dict[str, Relation] = {}
        self._begin: Begin | None = None
        self._committed_at = datetime.min
        self._head = b""  # the envelope's bytes up to the seq, and from commit_lsn on
        self._tail = b""
        self._insert_tail = b""  # an insert's: from "old" on

    def set_key_columns(self, table: str, columns: Sequence[str] | None) -> None:
        """Override (or, with ``None``, stop overriding) the key columns of ``table``."""
        if columns is None:
            self._key_columns.pop(table, None)
        else:
            self._key_columns[table] = tuple(columns)
        self._plans.clear()

    def key_columns_of(self, table: str) -> tuple[str, ...] | None:
        """The key columns overriding ``table``'s replica identity, if any."""
        return self._key_columns.get(table)

    def _plan(self, relation: Relation) -> _Plan:
        plan = self._plans.get(relation.oid)
        if plan is None or plan.relation is not relation or plan.version != self._types.version:
            plan = _Plan(relation, self._types, self._key_columns.get(relation.qualified_name))
            self._plans[relation.oid] = plan
            self._relations[relation.qualified_name] = relation
        return plan

    def relation(self, table: str) -> Relation | None:
        """The last Relation an event of ``table`` was built with (column names,
        type OIDs and modifiers, for the output formats); None: none yet."""
        return self._relations.get(table)

    def build(self, begin: Begin, change: Change, seq: int) -> Event:
        if begin is not self._begin:
            self._start(begin)
        op = change.op
        relation = change.relation
        if relation is not None and op != "truncate" and op != "message":
            plan = self._plans.get(relation.oid)
            if plan is None or plan.relation is not relation or plan.version != self._types.version:
                plan = self._plan(relation)
            if op == "insert" and _c_encode_object is not None:
                event = self._insert_event_c(begin, change, seq, plan)
                if event is not None:
                    return event
            return self._row_event(begin, change, seq, plan)
        if op == "truncate":
            return self._truncate_event(begin, change, seq)
        if op == "message":
            return self._message_event(begin, change, seq)
        raise DecodeError(f"a {op} change without a relation (transaction {begin.xid})")

    def _start(self, begin: Begin) -> None:
        """Once per transaction: the envelope's bytes before the seq and after
        the old row (the Python path formats its own strings)."""
        self._begin = begin
        at = begin.committed_at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        self._committed_at = at
        lsn = begin.commit_lsn
        self._head = b'{"id":"%016X/' % lsn
        # orjson writes an aware datetime as isoformat() does, 3x faster.
        self._tail = b',"commit_lsn":"%X/%X","xid":%d,"committed_at":%s}' % (
            lsn >> 32,
            lsn & 0xFFFFFFFF,
            begin.xid,
            orjson.dumps(at),
        )
        self._insert_tail = b',"old":null' + self._tail

    def inserts_from_wire(
        self, begin: Begin, relation: Relation, frames: list[bytes], start: int, seq: int
    ) -> list[Event]:
        """The events of the run of XLogData frames from ``frames[start]`` that
        are Inserts into ``relation`` (ids ``seq``, ``seq + 1``...), made without
        decoding them into :class:`~walrelay.model.Change` objects: what
        :meth:`build` makes of each decoded change, byte for byte
        (tests/unit/test_speedups.py). The run ends at the first other frame,
        or one the general path must decode (no C speedups, an unchanged TOAST
        value, a value the C encoder leaves to Python, a malformed message):
        empty when that is the first."""
        encode = _c_encode_insert_events
        if encode is None:
            return []
        plan = self._plans.get(relation.oid)
        if plan is None or plan.relation is not relation or plan.version != self._types.version:
            plan = self._plan(relation)
        # A transaction's head and tail are made in C unless this builder has
        # them already (_start: once per transaction, costly next to a
        # single-row transaction's one insert).
        started = begin is self._begin
        events = encode(
            frames,
            start,
            _RUN_LIMIT,
            plan.c_insert,
            self._head if started else None,
            seq,
            self._insert_tail if started else None,
            begin.commit_lsn,
            plan.table,
            begin.xid,
            begin.committed_at,
        )
        if events is None:  # a commit time the C code does not write
            self._start(begin)
            return self.inserts_from_wire(begin, relation, frames, start, seq)
        return events

    def _insert_event_c(self, begin: Begin, change: Change, seq: int, plan: _Plan) -> Event | None:
        """An insert, the most common change, through the C encoder in one step:
        what :meth:`_row_event` and :meth:`_row_body_c` make of it, byte for byte
        (tests/unit/test_speedups.py); None: a value needs the general path."""
        encode = _c_encode_object
        assert encode is not None
        new = change.new
        if new is None or change.old is not None:
            return None  # the general path says what is wrong, or has the old row
        c = plan.c_row
        record_json = encode(c.names, c.kinds, c.encoders, new, None)
        if record_json is None:
            return None
        if plan.key_names:
            k = plan.c_key
            key_json = encode(k.names, k.kinds, k.encoders, new, k.indexes)
            if key_json is None:
                return None
        else:
            key_json = b"null"
        body = b"".join(
            (
                self._head,
                _PADDED_SEQS[seq] if 0 <= seq < _PADDED_SEQ_LIMIT else b"%010d" % seq,
                plan.c_ops["insert"],
                key_json,
                b',"record":',
                record_json,
                self._insert_tail,
            )
        )
        return Event(
            begin.commit_lsn,
            seq,
            "insert",
            plan.table,
            (_group_key(plan, new, None),),
            body,
            begin.xid,
            begin.committed_at,
            None,
            key_json,
        )

    def _row_event(self, begin: Begin, change: Change, seq: int, plan: _Plan) -> Event:
        op = change.op
        new = change.new
        old = change.old
        # Can the old tuple stand in for key values (complete, or covering the key)?
        old_has_key = old is not None and (change.old_kind != "K" or plan.key_in_ri)
        keys: tuple[str, ...]
        if op == "delete":
            keys = (_group_key(plan, old if old_has_key else None, None),)
        else:
            if new is None:
                raise DecodeError(f"{plan.table}: an {op} without a new tuple")
            new_key = _group_key(plan, new, old if old_has_key else None)
            if old_has_key:
                old_key = _group_key(plan, old, None)
                keys = (new_key,) if old_key == new_key else (new_key, old_key)
            else:
                keys = (new_key,)
        encoded: tuple[bytes, bytes] | None = None
        if _c_encode_object is not None:
            encoded = self._row_body_c(change, seq, plan)
        if encoded is None:
            encoded = self._row_body(begin, change, seq, plan, old_has_key)
        body, key_json = encoded
        return Event(
            begin.commit_lsn,
            seq,
            op,
            plan.table,
            keys,
            body,
            begin.xid,
            begin.committed_at,
            None,
            key_json,
        )

    def _row_body_c(self, change: Change, seq: int, plan: _Plan) -> tuple[bytes, bytes] | None:
        """The envelope and its key's JSON through the C encoder; None when a value
        needs the Python path (an unchanged TOAST value, infinity, a value orjson
        refuses...)."""
        encode = _c_encode_object
        assert encode is not None
        new = change.new
        old = change.old
        c = plan.c_row
        if change.op == "delete":
            if old is None or (change.old_kind == "K" and not plan.key_in_ri):
                return None  # key values the old tuple does not have
            record_json: bytes | None = b"null"
            key_source = old
        else:
            assert new is not None
            record_json = encode(c.names, c.kinds, c.encoders, new, None)
            key_source = new
        if old is None:
            old_json: bytes | None = b"null"
        elif change.old_kind == "K":
            ri = plan.c_ri
            old_json = encode(ri.names, ri.kinds, ri.encoders, old, ri.indexes)
        else:
            old_json = encode(c.names, c.kinds, c.encoders, old, None)
        if plan.key_names:
            k = plan.c_key
            key_json = encode(k.names, k.kinds, k.encoders, key_source, k.indexes)
        else:
            key_json = b"null"
        if record_json is None or old_json is None or key_json is None:
            return None
        body = b"".join(
            (
                self._head,
                _PADDED_SEQS[seq] if 0 <= seq < _PADDED_SEQ_LIMIT else b"%010d" % seq,
                plan.c_ops[change.op],
                key_json,
                b',"record":',
                record_json,
                b',"old":',
                old_json,
                self._tail,
            )
        )
        return body, key_json

    def _row_body(
        self, begin: Begin, change: Change, seq: int, plan: _Plan, old_has_key: bool
    ) -> tuple[bytes, bytes]:
        """The envelope and its key's JSON (encoded once, spliced into the envelope)."""
        op = change.op
        new = change.new
        old = change.old
        record: dict[str, Any] | None = None
        old_obj: dict[str, Any] | None = None
        unchanged: list[str] = []
        if old is not None:
            if change.old_kind == "K":
                ri_values = [old[i] for i in plan.ri_idx]
                old_obj, _ = _convert(
                    plan.table, plan.ri_names, plan.ri_fast, plan.ri_safe, ri_values
                )
            else:
                old_obj, _ = _convert(plan.table, plan.names, plan.fast, plan.safe, old)
        if op == "delete":
            key_obj = _key_object(plan, old_obj, None)
        else:
            assert new is not None
            if op == "update" and UNCHANGED_TOAST in new:
                # skip the fast path, which would only fail on the marker
                record, unchanged = _convert_slow(plan.table, plan.names, plan.safe, new)
            else:
                record, unchanged = _convert(plan.table, plan.names, plan.fast, plan.safe, new)
            key_obj = _key_object(plan, record, old_obj if old_has_key else None)
        key_json = _NULL_JSON if key_obj is None else encode_json(key_obj)
        env: dict[str, Any] = {
            "id": format_event_id(begin.commit_lsn, seq),
            "op": op,
            "table": plan.table,
            "key": orjson.Fragment(key_json),
            "record": record,
            "old": old_obj,
            "commit_lsn": format_lsn(begin.commit_lsn),
            "xid": begin.xid,
            "committed_at": self._committed_at,
        }
        if unchanged:
            env["unchanged"] = unchanged
        escaped = _not_utf8_columns(record, old_obj)
        if escaped:
            env["not_utf8"] = escaped
        return encode_json(env), key_json

    def _common(self, begin: Begin, op: str, seq: int) -> dict[str, Any]:
        return envelope_head(begin.commit_lsn, seq, op, begin.xid, self._committed_at)

    def _truncate_event(self, begin: Begin, change: Change, seq: int) -> Event:
        env = self._common(begin, "truncate", seq)
        env["tables"] = [r.qualified_name for r in change.relations]
        env["cascade"] = change.cascade
        env["restart_identity"] = change.restart_identity
        return Event(
            commit_lsn=begin.commit_lsn,
            seq=seq,
            op="truncate",
            table="",
            keys=(),
            body=encode_json(env),
            xid=begin.xid,
            committed_at=begin.committed_at,
            key_json=_NULL_JSON,
        )

    def _message_event(self, begin: Begin, change: Change, seq: int) -> Event:
        prefix = change.prefix or ""
        content = change.content or b""
        env = self._common(begin, "message", seq)
        env["prefix"] = prefix
        env["content"], env["content_encoding"] = message_content(content)
        return Event(
            commit_lsn=begin.commit_lsn,
            seq=seq,
            op="message",
            table="",
            keys=("message" + KEY_SEPARATOR + prefix,),
            body=encode_json(env),
            xid=begin.xid,
            committed_at=begin.committed_at,
            key_json=_NULL_JSON,
        )
