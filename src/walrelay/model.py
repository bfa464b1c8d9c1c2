"""Plain data carried through the pipeline: LSNs, relations, changes, events.

The decoder produces :class:`Change` objects with *raw* column values (the
text-format bytes pgoutput sent); conversion to Python values happens once,
when a change becomes an :class:`Event` (see ``walrelay.pipeline.envelope``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from walrelay import exact_json

Lsn = int
"""A WAL position as an unsigned 64-bit integer."""


def format_lsn(lsn: Lsn) -> str:
    """``0x16B3748`` -> ``'0/16B3748'``, the notation PostgreSQL uses."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> Lsn:
    """``'0/16B3748'`` -> ``0x16B3748``. Raises ValueError on anything else."""
    hi, sep, lo = text.partition("/")
    if not sep or not hi or not lo:
        raise ValueError(f"not an LSN: {text!r} (expected 'X/Y' in hex)")
    return (int(hi, 16) << 32) | int(lo, 16)


SEQ_DIGITS = 10
"""Width of the zero-padded sequence in an event id (a transaction with more
changes than this allows still gets ids that parse, but they stop sorting)."""
_ID_FORMAT = f"%016X/%0{SEQ_DIGITS}d"


def format_event_id(commit_lsn: Lsn, seq: int) -> str:
    """The message id ``<commit_lsn>/<seq>`` (ARCHITECTURE section 2).

    The LSN is written as 16 zero-padded hex digits and the sequence as
    :data:`SEQ_DIGITS` zero-padded decimal digits, so that ids sort as plain
    strings in commit order, also within a transaction (``.../0000000009``
    before ``.../0000000010``). Ids written before the padding (``.../9``)
    still parse with :func:`parse_event_id`.
    """
    return _ID_FORMAT % (commit_lsn, seq)  # %-formatting: half an f-string's cost here


def parse_event_id(text: str) -> tuple[Lsn, int]:
    lsn, sep, seq = text.rpartition("/")
    if not sep:
        raise ValueError(f"not an event id: {text!r} (expected '<commit_lsn>/<seq>')")
    return int(lsn, 16), int(seq)


class _Unchanged:
    """Marker for a TOASTed column whose value the server did not send."""

    __slots__ = ()
    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _Unchanged()
"""A column value pgoutput marked 'u' (unchanged TOAST): never null."""

RawValue = bytes | None | _Unchanged
RawTuple = tuple[RawValue, ...]


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(slots=True, frozen=True)
class Relation:
    """A table as pgoutput described it in its last Relation message."""

    oid: int
    schema: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]
    # "schema.name", formatted once: the engine routes every change by it.
    qualified_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "qualified_name", f"{self.schema}.{self.name}")

    @property
    def key_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.is_key)


Op = Literal["insert", "update", "delete", "truncate", "message", "read", "begin", "end"]
"""``begin``/``end``: transaction metadata events (``transaction_metadata: true``)."""


@dataclass(slots=True)
class Change:
    """One decoded change inside a transaction.

    ``new``/``old`` hold raw text values in column order of ``relation``.
    ``old_kind`` is ``'K'`` when the server sent only the old key, ``'O'``
    when it sent the whole old row (REPLICA IDENTITY FULL), else None.
    """

    op: Op
    relation: Relation | None = None
    new: RawTuple | None = None
    old: RawTuple | None = None
    old_kind: str | None = None
    # TRUNCATE: every relation truncated by one statement, and its options.
    relations: tuple[Relation, ...] = ()
    cascade: bool = False
    restart_identity: bool = False
    # Logical decoding messages (pg_logical_emit_message).
    prefix: str | None = None
    content: bytes | None = None
    message_lsn: Lsn = 0
    # The (sub)transaction that made the change, when the server says so
    # (streamed transactions only).
    xid: int | None = None


@dataclass(slots=True)
class Begin:
    """Start of a committed transaction, as handed to the pipeline."""

    xid: int
    commit_lsn: Lsn
    committed_at: datetime
    origin: str | None = None


@dataclass(slots=True)
class Commit:
    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    committed_at: datetime


@dataclass(slots=True, frozen=True)
class Route:
    """Where a router (the outbox event router, :mod:`walrelay.pipeline.outbox_router`)
    sends an event, for the sinks that have topics, subjects or streams.

    A broker sink honours it instead of its own naming: ``topic`` is the
    Kafka topic / NATS subject / Redis stream / RabbitMQ routing key, ``key``
    the record key (Kafka key), ``value`` the record value (the routed payload
    as JSON; None: a tombstone, e.g. a Kafka record with a null value) and
    ``headers`` extra record headers (after the sink's own ``id``, ``op``,
    ``table``). Sinks without such notions (file, stdout, webhook) ignore it:
    for them the event's ``body`` already is the routed envelope.
    """

    topic: str
    key: str | None
    value: bytes | None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, frozen=True)
class Rendering:
    """What a destination's output format (:mod:`walrelay.pipeline.formats`) made
    of an event besides its body.

    ``key``: the record key as the format defines it (Debezium's key object;
    None: the format's key is null); ``old_key``: the key before an UPDATE
    that changed it (for a Kafka tombstone of the old key); ``attributes``:
    transport attributes (CloudEvents binary mode: ``specversion``, ``id``...,
    sent as ``ce-`` HTTP headers / ``ce_`` Kafka headers); ``tables``: the
    tables a truncate truncated (the formatted body does not list them all).
    """

    key: bytes | None = None
    old_key: bytes | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    tables: tuple[str, ...] = ()
    # The body's media type when it is not walrelay's application/json
    # (CloudEvents structured mode: application/cloudevents+json).
    content_type: str | None = None


@dataclass(slots=True)
class Event:
    """A change as one destination sees it: id, grouping keys, encoded body.

    ``keys`` holds one grouping key, or two for an UPDATE that changed the
    key (old and new): the scheduler holds both while the event is in
    flight. ``body`` is the JSON envelope, encoded once and shared by every
    destination that uses the default envelope; :meth:`envelope` decodes it
    for the sinks that need its fields (keeping a decoded copy on every
    buffered event would cost several times the memory of the body).

    ``key_json`` is the envelope's ``"key"`` value exactly as it is in
    ``body`` (``b'{"id":7}'``; ``b"null"`` for a table without a key, a
    truncate or a logical message), set by the envelope builder, which has it
    in hand, so that sinks that need the key (Kafka's record key) do not
    parse the body again. None when the event was made elsewhere (e.g. read
    back from the parked-events table): then the key is in ``body``.
    """

    commit_lsn: Lsn
    seq: int
    op: Op
    table: str
    keys: tuple[str, ...]
    body: bytes
    xid: int
    committed_at: datetime
    # Set by a destination's router (outbox): topic, key, value, headers for brokers.
    route: Route | None = None
    key_json: bytes | None = None
    # Set when a destination's transform step failed on this event: the error
    # (with the traceback); the destination parks the event instead of sending
    # it (walrelay.pipeline.transforms).
    failure: str | None = None
    # Set by a destination's output format (debezium, cloudevents).
    rendering: Rendering | None = None

    @property
    def id(self) -> str:
        return format_event_id(self.commit_lsn, self.seq)

    @property
    def size(self) -> int:
        """Memory this event holds while buffered: its body plus the Python
        objects around it (measured: ~300 bytes), so that ``buffer_bytes``
        bounds the process's memory rather than just the payload bytes."""
        route = self.route
        if route is not None and route.value is not None:
            return len(self.body) + len(route.value) + EVENT_OVERHEAD_BYTES
        return len(self.body) + EVENT_OVERHEAD_BYTES

    def envelope(self) -> dict[str, Any]:
        value = parse_body(self.body)
        assert isinstance(value, dict)
        return value


def parse_body(data: bytes) -> Any:
    """An event body parsed, every number exact (a json column's
    ``12345678901234567890123`` or ``1e400``): :func:`walrelay.exact_json.loads`."""
    return exact_json.loads(data)


EVENT_OVERHEAD_BYTES = 320
