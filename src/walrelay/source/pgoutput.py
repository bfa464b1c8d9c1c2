"""pgoutput binary protocol decoder (PostgreSQL logical replication, protocols 1 and 2).

Pure: no I/O, no clocks. :class:`Decoder` turns the payload of ONE XLogData
frame into one message. Data changes (Insert, Update, Delete, Truncate)
come out directly as :class:`walrelay.model.Change` objects, so the hot path
allocates one object per row plus the value tuple; control messages come
out as the small slotted classes below.

Format reference: PostgreSQL docs, "Logical Replication Message Formats".
Inside a Stream Start / Stream Stop block (protocol 2), Relation, Type,
Insert, Update, Delete, Truncate and Message carry an Int32 (sub)xid right
after the type byte; :class:`Decoder` tracks the block itself, and
:meth:`Decoder.decode` takes ``streamed=True`` for replaying buffered stream
payloads outside the block.

Any malformed input raises :class:`walrelay.errors.DecodeError` (a change for
an OID no Relation message described raises its subclass
:class:`walrelay.errors.UnknownRelation`); nothing else escapes.

Column values stay raw: ``bytes`` for text ('t') and binary ('b') values,
``None`` for NULL, :data:`walrelay.model.UNCHANGED_TOAST` for an unchanged
TOASTed value the server did not send.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from walrelay.errors import DecodeError, UnknownRelation
from walrelay.model import UNCHANGED_TOAST, Change, Column, Lsn, RawTuple, RawValue, Relation
from walrelay.speedups import decode_tuple as _c_decode_tuple

__all__ = [
    "PG_EPOCH",
    "BeginMessage",
    "CommitMessage",
    "Decoder",
    "LogicalMessage",
    "Message",
    "OriginMessage",
    "RelationMessage",
    "StreamAbortMessage",
    "StreamCommitMessage",
    "StreamStartMessage",
    "StreamStopMessage",
    "TypeMessage",
    "pg_timestamp",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""PostgreSQL timestamps count microseconds from here."""

# Message type bytes.
BEGIN: Final = 0x42  # 'B'
MESSAGE: Final = 0x4D  # 'M'
COMMIT: Final = 0x43  # 'C'
ORIGIN: Final = 0x4F  # 'O'
RELATION: Final = 0x52  # 'R'
TYPE: Final = 0x59  # 'Y'
INSERT: Final = 0x49  # 'I'
UPDATE: Final = 0x55  # 'U'
DELETE: Final = 0x44  # 'D'
TRUNCATE: Final = 0x54  # 'T'
STREAM_START: Final = 0x53  # 'S'
STREAM_STOP: Final = 0x45  # 'E'
STREAM_COMMIT: Final = 0x63  # 'c'
STREAM_ABORT: Final = 0x41  # 'A'

#: Message types that carry a (sub)xid after the type byte inside a stream block.
XID_CARRYING: Final = frozenset({RELATION, TYPE, INSERT, UPDATE, DELETE, TRUNCATE, MESSAGE})

_TWO_PHASE: Final = {
    0x62: "Begin Prepare",
    0x50: "Prepare",
    0x4B: "Commit Prepared",
    0x72: "Rollback Prepared",
    0x70: "Stream Prepare",
}

_K: Final = 0x4B  # 'K' old key
_O: Final = 0x4F  # 'O' old row
_NEW: Final = 0x4E  # 'N' new row

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_ORIGIN = struct.Struct("!Q")
_MSG_HEAD = struct.Struct("!BQ")
_REL_TAIL = struct.Struct("!BH")
_COL_TAIL = struct.Struct("!Ii")
_TRUNC_HEAD = struct.Struct("!IB")
_STREAM_START = struct.Struct("!IB")
_STREAM_COMMIT = struct.Struct("!IBQQq")
_STREAM_ABORT = struct.Struct("!II")
_OID_KIND = struct.Struct("!IB")

_MAX_TS_US = 9_000_000_000_000_000  # far beyond datetime's range: reject before arithmetic


def pg_timestamp(us: int) -> datetime:
    """Microseconds since 2000-01-01 UTC -> aware datetime. DecodeError if out of range."""
    try:
        return PG_EPOCH + timedelta(0, 0, us)  # positional: faster than microseconds=
    except OverflowError as e:
        raise DecodeError(f"timestamp out of range: {us} microseconds since 2000-01-01") from e


# --------------------------------------------------------------------------- messages


@dataclass(slots=True, frozen=True)
class BeginMessage:
    final_lsn: Lsn
    committed_at: datetime
    xid: int


@dataclass(slots=True, frozen=True)
class CommitMessage:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    committed_at: datetime


@dataclass(slots=True, frozen=True)
class OriginMessage:
    origin_lsn: Lsn
    name: str


@dataclass(slots=True, frozen=True)
class RelationMessage:
    """A Relation message. The decoder has already stored it in its cache."""

    relation: Relation
    xid: int | None = None


@dataclass(slots=True, frozen=True)
class TypeMessage:
    oid: int
    schema: str
    name: str
    xid: int | None = None


@dataclass(slots=True, frozen=True)
class LogicalMessage:
    """``pg_logical_emit_message``: ``lsn`` is the LSN field the server sent."""

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(slots=True, frozen=True)
class StreamStartMessage:
    xid: int
    first_segment: bool


@dataclass(slots=True, frozen=True)
class StreamStopMessage:
    pass


@dataclass(slots=True, frozen=True)
class StreamCommitMessage:
    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    committed_at: datetime


@dataclass(slots=True, frozen=True)
class StreamAbortMessage:
    xid: int
    subxid: int


Message = (
    Change
    | BeginMessage
    | CommitMessage
    | OriginMessage
    | RelationMessage
    | TypeMessage
    | LogicalMessage
    | StreamStartMessage
    | StreamStopMessage
    | StreamCommitMessage
    | StreamAbortMessage
)

_STREAM_STOP_MSG: Final = StreamStopMessage()


# --------------------------------------------------------------------------- helpers


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)  # ValueError when unterminated: wrapped by the caller
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(buf: bytes, pos: int, rel: Relation) -> tuple[RawTuple, int]:
    """TupleData at ``pos`` -> (values, next position).

    The C version returns None for anything malformed; the Python one then
    finds what is wrong and says so.
    """
    if _c_decode_tuple is not None:
        decoded = _c_decode_tuple(buf, pos, len(rel.columns))
        if decoded is not None:
            return decoded  # type: ignore[return-value]
    return _tuple_py(buf, pos, rel)


def _tuple_py(
    buf: bytes,
    pos: int,
    rel: Relation,
    _unpack_len: Callable[[bytes, int], tuple[int]] = _U32.unpack_from,  # bound once
    _unchanged: RawValue = UNCHANGED_TOAST,
) -> tuple[RawTuple, int]:
    """TupleData at ``pos`` -> (values, next position), in Python.

    Hot loop: literal kind bytes ('t' 116, 'n' 110, 'u' 117, 'b' 98), no
    per-column bounds check (a length running past the end leaves ``pos``
    beyond the buffer: the next index raises IndexError, or the final check
    below fires).
    """
    (n,) = _U16.unpack_from(buf, pos)
    if n != len(rel.columns):
        raise DecodeError(
            f"tuple for {rel.qualified_name} (oid {rel.oid}) has {n} columns, the last "
            f"Relation message described {len(rel.columns)}"
        )
    pos += 2
    values: list[RawValue] = [None] * n
    for i in range(n):
        kind = buf[pos]
        if kind == 116 or kind == 98:
            end = pos + 5 + _unpack_len(buf, pos + 1)[0]
            values[i] = buf[pos + 5 : end]
            pos = end
        elif kind == 110:
            pos += 1
        elif kind == 117:
            values[i] = _unchanged
            pos += 1
        else:
            raise DecodeError(f"unknown tuple column kind {_type_name(kind)} at offset {pos}")
    if pos > len(buf):
        raise DecodeError("a column value runs past the end of the message")
    return tuple(values), pos


def _type_name(kind: int) -> str:
    c = chr(kind)
    return repr(c) if c.isprintable() else f"{kind:#04x}"


# --------------------------------------------------------------------------- decoder


class Decoder:
    """Decodes one pgoutput message per :meth:`decode` call; keeps the relation cache.

    ``relations`` maps relation OID -> :class:`Relation` from the latest Relation
    message decoded (every Relation message decoded updates it, so a caller that
    buffers streamed transactions must only decode their payloads at commit).
    ``types`` maps type OID -> (schema, name) from Type messages.
    ``in_stream`` is True between a Stream Start and a Stream Stop.
    """

    __slots__ = ("in_stream", "relations", "types")

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, tuple[str, str]] = {}
        self.in_stream = False

    def decode(
        self, data: bytes | bytearray | memoryview, offset: int = 0, streamed: bool | None = None
    ) -> Message:
        """Decode the message starting at ``data[offset]`` and ending at the end of ``data``.

        ``streamed`` says whether xid-carrying messages have the Int32 xid
        field; None (default) means "as the last Stream Start/Stop said".
        Raises DecodeError (or UnknownRelation) on anything malformed.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if streamed is None:
            streamed = self.in_stream
        try:
            return self._decode(data, offset, streamed)
        except DecodeError:
            raise
        except UnicodeDecodeError as e:
            # Only a SQL_ASCII database sends such bytes (walrelay.source.encoding):
            # values are delivered in hex, but a name is part of every event.
            raise DecodeError(
                f"malformed pgoutput message ({_describe(data, offset)}): a schema, table,"
                f" column or type name or a logical message prefix is not valid UTF-8: {e}",
                fix="rename the object to a UTF-8 name (or drop it from the publication);"
                " a logical message already written can only be skipped with"
                " pg_replication_slot_advance",
            ) from e
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            # struct.error / IndexError: truncated; ValueError: unterminated
            # string or invalid UTF-8; OverflowError: absurd numbers.
            raise DecodeError(f"malformed pgoutput message ({_describe(data, offset)}): {e}") from e

    # The order of the tests below is the hot-path order: row changes first.
    def _decode(self, buf: bytes, pos: int, streamed: bool) -> Message:
        kind = buf[pos]
        pos += 1
        if kind in XID_CARRYING:
            xid: int | None = None
            if streamed:
                (xid,) = _U32.unpack_from(buf, pos)
                pos += 4
            if kind == INSERT:
                oid, marker = _OID_KIND.unpack_from(buf, pos)
                rel = self.relations.get(oid)
                if rel is None:
                    raise _unknown(oid, "Insert")
                if marker != _NEW:
                    raise DecodeError(
                        f"Insert: expected 'N' before the new tuple, got {marker:#04x}"
                    )
                new, pos = _tuple(buf, pos + 5, rel)
                _end(buf, pos)
                return Change("insert", rel, new, None, None, (), False, False, None, None, 0, xid)
            if kind == UPDATE:
                oid, marker = _OID_KIND.unpack_from(buf, pos)
                rel = self.relations.get(oid)
                if rel is None:
                    raise _unknown(oid, "Update")
                pos += 5
                old: RawTuple | None = None
                old_kind: str | None = None
                if marker in (_K, _O):
                    old_kind = "K" if marker == _K else "O"
                    old, pos = _tuple(buf, pos, rel)
                    marker = buf[pos]
                    pos += 1
                if marker != _NEW:
                    raise DecodeError(
                        f"Update: expected 'K', 'O' or 'N' tuple marker, got {marker:#04x}"
                    )
                new, pos = _tuple(buf, pos, rel)
                _end(buf, pos)
                return Change(
                    "update", rel, new, old, old_kind, (), False, False, None, None, 0, xid
                )
            if kind == DELETE:
                oid, marker = _OID_KIND.unpack_from(buf, pos)
                rel = self.relations.get(oid)
                if rel is None:
                    raise _unknown(oid, "Delete")
                if marker != _K and marker != _O:
                    raise DecodeError(
                        f"Delete: expected 'K' or 'O' tuple marker, got {marker:#04x}"
                    )
                old, pos = _tuple(buf, pos + 5, rel)
                _end(buf, pos)
                old_kind = "K" if marker == _K else "O"
                return Change(
                    "delete", rel, None, old, old_kind, (), False, False, None, None, 0, xid
                )
            if kind == RELATION:
                return self._relation(buf, pos, xid)
            if kind == TRUNCATE:
                return self._truncate(buf, pos, xid)
            if kind == TYPE:
                (oid,) = _U32.unpack_from(buf, pos)
                schema, pos = _cstring(buf, pos + 4)
                name, pos = _cstring(buf, pos)
                _end(buf, pos)
                self.types[oid] = (schema, name)
                return TypeMessage(oid, schema, name, xid)
            # MESSAGE
            flags, lsn = _MSG_HEAD.unpack_from(buf, pos)
            prefix, pos = _cstring(buf, pos + 9)
            (ln,) = _U32.unpack_from(buf, pos)
            pos += 4
            if pos + ln != len(buf):
                raise DecodeError(
                    f"Message: content length {ln} does not match the {len(buf) - pos} bytes left"
                )
            return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:], xid)
        if kind == BEGIN:
            final_lsn, ts, xid_ = _BEGIN.unpack_from(buf, pos)
            _end(buf, pos + _BEGIN.size)
            return BeginMessage(final_lsn, pg_timestamp(ts), xid_)
        if kind == COMMIT:
            flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, pos)
            _end(buf, pos + _COMMIT.size)
            return CommitMessage(flags, commit_lsn, end_lsn, pg_timestamp(ts))
        if kind == ORIGIN:
            (origin_lsn,) = _ORIGIN.unpack_from(buf, pos)
            name, pos = _cstring(buf, pos + 8)
            _end(buf, pos)
            return OriginMessage(origin_lsn, name)
        if kind == STREAM_START:
            sxid, first = _STREAM_START.unpack_from(buf, pos)
            _end(buf, pos + _STREAM_START.size)
            self.in_stream = True
            return StreamStartMessage(sxid, first == 1)
        if kind == STREAM_STOP:
            _end(buf, pos)
            self.in_stream = False
            return _STREAM_STOP_MSG
        if kind == STREAM_COMMIT:
            sxid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT.unpack_from(buf, pos)
            _end(buf, pos + _STREAM_COMMIT.size)
            return StreamCommitMessage(sxid, flags, commit_lsn, end_lsn, pg_timestamp(ts))
        if kind == STREAM_ABORT:
            sxid, subxid = _STREAM_ABORT.unpack_from(buf, pos)
            _end(buf, pos + _STREAM_ABORT.size)
            return StreamAbortMessage(sxid, subxid)
        if kind in _TWO_PHASE:
            raise DecodeError(
                f"pgoutput sent a two-phase commit message ({_TWO_PHASE[kind]}), which walrelay "
                "does not support",
                fix="create the replication slot without two_phase",
            )
        raise DecodeError(f"unknown pgoutput message type {_type_name(kind)}")

    def _relation(self, buf: bytes, pos: int, xid: int | None) -> RelationMessage:
        (oid,) = _U32.unpack_from(buf, pos)
        schema, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        ident, ncols = _REL_TAIL.unpack_from(buf, pos)
        pos += 3
        if ident not in b"dnfi":
            raise DecodeError(f"Relation {schema}.{name}: unknown replica identity {ident:#04x}")
        cols: list[Column] = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            type_oid, typmod = _COL_TAIL.unpack_from(buf, pos)
            pos += 8
            cols.append(Column(cname, type_oid, typmod, bool(flags & 1)))
        _end(buf, pos)
        rel = Relation(oid, schema, name, chr(ident), tuple(cols))
        self.relations[oid] = rel
        return RelationMessage(rel, xid)

    def _truncate(self, buf: bytes, pos: int, xid: int | None) -> Change:
        n, options = _TRUNC_HEAD.unpack_from(buf, pos)
        pos += 5
        if pos + 4 * n != len(buf):
            raise DecodeError(
                f"Truncate: {n} relation OIDs do not fit the {len(buf) - pos} bytes left"
            )
        rels: list[Relation] = []
        for (oid,) in _U32.iter_unpack(buf[pos:]):
            rel = self.relations.get(oid)
            if rel is None:
                raise _unknown(oid, "Truncate")
            rels.append(rel)
        return Change(
            "truncate",
            rels[0] if rels else None,
            relations=tuple(rels),
            cascade=bool(options & 1),
            restart_identity=bool(options & 2),
            xid=xid,
        )


def _end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        if pos > len(buf):
            raise DecodeError(f"message truncated: needs {pos} bytes, has {len(buf)}")
        raise DecodeError(f"{len(buf) - pos} unexpected trailing bytes after the message")


def _unknown(oid: int, what: str) -> UnknownRelation:
    return UnknownRelation(
        f"{what} for relation OID {oid}, which no Relation message described",
        fix="restart streaming from the slot so the server resends its Relation messages",
    )


def _describe(buf: bytes, offset: int) -> str:
    if offset >= len(buf):
        return "empty"
    return f"type {_type_name(buf[offset])}, {len(buf) - offset} bytes"
