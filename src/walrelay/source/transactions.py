"""Transaction assembly: pgoutput payloads -> Begin / Change / Commit items.

:class:`TransactionAssembler` sits between the replication stream and the
pipeline. It owns the :class:`~walrelay.source.pgoutput.Decoder` (and so the
relation cache) and the buffers of streamed (protocol 2) in-progress
transactions.

Decisions worth knowing (see also :meth:`TransactionAssembler.feed`):

* **Begin is held back by one message.** pgoutput sends Origin right after
  Begin, so the :class:`~walrelay.model.Begin` of a normal transaction is
  returned together with the first Change (or the Commit) that follows it,
  with ``origin`` already set. A consumer never sees a Begin whose origin is
  filled in later.
* **Streamed transactions are buffered raw.** Between Stream Start and Stream
  Stop, payloads are kept as bytes (not decoded) per top-level xid: in memory
  up to ``memory_limit_bytes`` in total, beyond which the biggest in-memory
  buffers move to one spill file per xid (records ``[subxid u32][len u32]
  [payload]``); once spilled, a transaction keeps appending to its file, so
  memory stays bounded whatever the transaction's size.
* **Stream Commit replays lazily.** ``feed()`` then returns a generator that
  yields Begin, decodes buffered payloads one by one (applying the stream's
  Relation messages to the cache in order) and yields Changes, then Commit.
  It must be exhausted before the next ``feed()`` (enforced: RuntimeError).
* **Aborted subtransactions** (Stream Abort with subxid != xid) are skipped
  at replay: their changes *and* their Relation/Type messages, which is what
  PostgreSQL's own apply worker does (it truncates its spool file at the
  subtransaction's first message; pgoutput re-sends the schema afterwards).
* **Non-transactional logical messages** become a one-change transaction:
  Begin(xid=0) / Change('message') / Commit, stamped with ``now()``. Their
  ``commit_lsn`` is ``message_lsn - 1`` and ``end_lsn`` is ``message_lsn``:
  the LSN pgoutput sends for a message is the *end* of its WAL record, which
  is very often exactly where the next record -- possibly a commit record --
  starts, so using it as a commit LSN could give two transactions the same
  event ids. Record starts are 8-byte aligned, so ``message_lsn - 1`` never
  equals a real commit LSN and still sorts before the next record.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import BinaryIO, Final

from walrelay.errors import DecodeError
from walrelay.model import Begin, Change, Commit, Lsn, Relation, format_lsn
from walrelay.source.pgoutput import (
    _BEGIN,
    _COMMIT,
    BEGIN,
    COMMIT,
    INSERT,
    ORIGIN,
    STREAM_STOP,
    XID_CARRYING,
    BeginMessage,
    CommitMessage,
    Decoder,
    LogicalMessage,
    OriginMessage,
    RelationMessage,
    StreamAbortMessage,
    StreamCommitMessage,
    StreamStartMessage,
    StreamStopMessage,
    TypeMessage,
    pg_timestamp,
)
from walrelay.speedups import pg_timestamp as _c_pg_timestamp

__all__ = ["Item", "TransactionAssembler"]

Item = Begin | Change | Commit

_RECORD = struct.Struct("!II")
_U32 = struct.Struct("!I")
_NO_ITEMS: Final[tuple[Item, ...]] = ()
_FILE_BUFFER = 64 * 1024
_RECORD_OVERHEAD = 8  # the list slot holding the payload; sys.getsizeof covers the rest


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _StreamedTx:
    """Raw payloads of one in-progress streamed top-level transaction."""

    __slots__ = ("aborted", "file", "mem", "origin", "path", "payloads", "xid")

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self.payloads: list[bytes] = []
        self.mem = 0
        self.aborted: set[int] = set()
        self.origin: str | None = None
        self.path: str | None = None
        self.file: BinaryIO | None = None

    def spill(self, spill_dir: str | None) -> int:
        """Move the in-memory payloads to this transaction's spill file; returns bytes freed."""
        if self.file is None:
            if spill_dir is not None:
                # source.spill_dir may name a directory not made yet.
                os.makedirs(spill_dir, mode=0o700, exist_ok=True)
            fd, self.path = tempfile.mkstemp(
                prefix=f"walrelay-xid{self.xid}-", suffix=".spill", dir=spill_dir
            )
            self.file = os.fdopen(fd, "wb", buffering=_FILE_BUFFER)
        write = self.file.write
        for payload in self.payloads:
            write(_RECORD.pack(_subxid(payload, self.xid), len(payload)))
            write(payload)
        self.payloads = []
        freed, self.mem = self.mem, 0
        return freed

    def append_to_file(self, payload: bytes) -> None:
        assert self.file is not None
        self.file.write(_RECORD.pack(_subxid(payload, self.xid), len(payload)))
        self.file.write(payload)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(subxid, payload) in arrival order, read back lazily from the spill file."""
        if self.file is None:
            xid = self.xid
            for payload in self.payloads:
                yield _subxid(payload, xid), payload
            return
        self.file.close()
        self.file = None
        assert self.path is not None
        with open(self.path, "rb", buffering=_FILE_BUFFER) as f:
            read = f.read
            while True:
                head = read(8)
                if not head:
                    return
                if len(head) != 8:
                    raise DecodeError(f"spill file {self.path} is truncated")
                subxid, size = _RECORD.unpack(head)
                payload = read(size)
                if len(payload) != size:
                    raise DecodeError(f"spill file {self.path} is truncated")
                yield subxid, payload

    def discard(self) -> None:
        self.payloads = []
        self.mem = 0
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def _subxid(payload: bytes, default: int) -> int:
    """The (sub)xid a buffered stream payload carries (Origin carries none)."""
    if payload[0] in XID_CARRYING:
        return int(_U32.unpack_from(payload, 1)[0])
    return default


_NEW_TUPLE: Final = 0x4E  # 'N': an Insert's new tuple follows
_BEGIN_LEN = 1 + _BEGIN.size
_COMMIT_LEN = 1 + _COMMIT.size


class _Where:
    """An LSN that formats itself only when an error message is built."""

    __slots__ = ("lsn",)

    def __init__(self, lsn: Lsn) -> None:
        self.lsn = lsn

    def __str__(self) -> str:
        return format_lsn(self.lsn)

    def __format__(self, spec: str) -> str:
        return format_lsn(self.lsn)


class TransactionAssembler:
    """Turns pgoutput payloads into the Begin / Change / Commit items the pipeline consumes.

    ``spill_dir``: where streamed transactions beyond ``memory_limit_bytes``
    are spilled (default: the system temp directory). ``now``: the clock used
    only to stamp non-transactional logical messages, which carry no time.
    """

    def __init__(
        self,
        *,
        spill_dir: str | None = None,
        memory_limit_bytes: int = 8 * 1024 * 1024,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._decoder = Decoder()
        self._spill_dir = spill_dir
        self._limit = memory_limit_bytes
        self._now = now
        self._begin: Begin | None = None  # the open normal transaction
        self._pending_begin = False  # its Begin has not been returned yet
        self._streams: dict[int, _StreamedTx] = {}
        self._stream: _StreamedTx | None = None  # inside a Stream Start/Stop block
        self._mem = 0
        self._replay: Iterator[Item] | None = None
        self._replaying_tx: _StreamedTx | None = None
        self._replaying = False

    # ------------------------------------------------------------------ introspection

    @property
    def relations(self) -> Mapping[int, Relation]:
        """The relation cache: OID -> Relation from the latest applied Relation message."""
        return self._decoder.relations

    @property
    def decoder(self) -> Decoder:
        return self._decoder

    @property
    def in_transaction(self) -> bool:
        """True between a Begin and its Commit (normal transactions only)."""
        return self._begin is not None

    @property
    def open_streams(self) -> tuple[int, ...]:
        """Top-level xids of streamed transactions buffered and not yet committed/aborted."""
        return tuple(self._streams)

    @property
    def buffered_bytes(self) -> int:
        """Memory held by streamed-transaction buffers (bounded by memory_limit_bytes)."""
        return self._mem

    @property
    def spill_files(self) -> tuple[str, ...]:
        return tuple(s.path for s in self._streams.values() if s.path is not None)

    # ------------------------------------------------------------------ feeding

    def feed(
        self, payload: bytes | bytearray | memoryview, wal_start: Lsn = 0, *, offset: int = 0
    ) -> Iterable[Item]:
        """Consume one pgoutput message (``payload[offset:]``) and return the items it completes.

        Usually a list (an empty tuple when nothing completes: Begin is held
        back until the next Change or Commit, see the module docstring, and
        Relation / Type / Origin / stream messages return nothing). For a
        Stream Commit it is a lazy
        generator replaying the whole streamed transaction (Begin, Changes,
        Commit): iterate it to the end before the next ``feed()`` call, which
        otherwise raises RuntimeError. ``wal_start`` (the XLogData start LSN)
        is only used in error messages.

        Raises DecodeError (or UnknownRelation) for malformed input or a
        message that makes no sense where it arrives.
        """
        if self._replaying:
            raise RuntimeError(
                "feed() called before the previous Stream Commit replay was fully consumed"
            )
        try:
            kind = payload[offset]
        except IndexError:
            raise DecodeError(f"empty pgoutput message at {format_lsn(wal_start)}") from None
        if self._stream is not None and kind != STREAM_STOP:
            self._buffer(self._stream, payload, offset, kind, wal_start)
            return _NO_ITEMS
        # Fast paths for the two messages every transaction has (a single-row
        # transaction is Begin, one change, Commit): no message objects.
        if kind == BEGIN and self._begin is None and len(payload) - offset == _BEGIN_LEN:
            final_lsn, ts, xid = _BEGIN.unpack_from(payload, offset + 1)
            at = None if _c_pg_timestamp is None else _c_pg_timestamp(ts)
            self._begin = Begin(xid, final_lsn, pg_timestamp(ts) if at is None else at)
            self._pending_begin = True
            return _NO_ITEMS
        if kind == COMMIT and self._begin is not None and len(payload) - offset == _COMMIT_LEN:
            open_begin = self._begin
            _, commit_lsn, end_lsn, _ = _COMMIT.unpack_from(payload, offset + 1)
            # pgoutput sends the same commit timestamp in Begin and Commit.
            commit = Commit(open_begin.xid, commit_lsn, end_lsn, open_begin.committed_at)
            self._begin = None
            if self._pending_begin:
                self._pending_begin = False
                return [open_begin, commit]
            return [commit]
        msg = self._decoder.decode(payload, offset, False)
        if type(msg) is Change:
            begin = self._begin
            if begin is None:
                raise DecodeError(
                    f"{msg.op} outside a transaction at {format_lsn(wal_start)}",
                )
            if self._pending_begin:
                self._pending_begin = False
                return [begin, msg]
            return [msg]
        return self._control(msg, wal_start)

    def insert_start(self, payload: bytes, offset: int) -> tuple[Begin | None, Relation] | None:
        """For a caller that turns Inserts into events straight from their
        messages (``EnvelopeBuilder.inserts_from_wire``), what :meth:`feed` would
        have returned before the change: the held-back Begin (None: returned
        already) and the Insert's relation -- only for an Insert of the open
        (not streamed) transaction into a known relation, else None (then
        :meth:`feed` it). The Begin counts as returned: if the caller falls back
        to :meth:`feed` after all, feed returns the change alone."""
        begin = self._begin
        if (
            begin is None
            or self._stream is not None
            or self._replaying
            or payload[offset] != INSERT
            or len(payload) - offset < 8
            or payload[offset + 5] != _NEW_TUPLE
        ):
            return None
        relation = self._decoder.relations.get(_U32.unpack_from(payload, offset + 1)[0])
        if relation is None:
            return None
        if self._pending_begin:
            self._pending_begin = False
            return begin, relation
        return None, relation

    def _control(self, msg: object, wal_start: Lsn) -> Iterable[Item]:
        where = _Where(wal_start)  # formatted only if an error message needs it
        if isinstance(msg, BeginMessage):
            if self._begin is not None:
                raise DecodeError(
                    f"Begin of xid {msg.xid} at {where} while xid {self._begin.xid} is open"
                )
            self._begin = Begin(msg.xid, msg.final_lsn, msg.committed_at)
            self._pending_begin = True
            return _NO_ITEMS
        if isinstance(msg, CommitMessage):
            begin = self._begin
            if begin is None:
                raise DecodeError(f"Commit at {where} outside a transaction")
            out: list[Item] = [begin] if self._pending_begin else []
            out.append(Commit(begin.xid, msg.commit_lsn, msg.end_lsn, msg.committed_at))
            self._begin = None
            self._pending_begin = False
            return out
        if isinstance(msg, (RelationMessage, TypeMessage)):
            return _NO_ITEMS  # the decoder has already updated its caches
        if isinstance(msg, OriginMessage):
            if self._begin is not None:
                self._begin.origin = msg.name
            return _NO_ITEMS
        if isinstance(msg, LogicalMessage):
            change = _message_change(msg)
            begin = self._begin
            if begin is not None:
                # Transactional, or (never sent by PostgreSQL) a non-transactional
                # message inside a transaction: keep it with the transaction.
                if self._pending_begin:
                    self._pending_begin = False
                    return [begin, change]
                return [change]
            if msg.transactional:
                raise DecodeError(f"transactional logical message at {where} outside a transaction")
            at = self._now()
            lsn = msg.lsn - 1 if msg.lsn > 0 else 0
            return [Begin(0, lsn, at), change, Commit(0, lsn, msg.lsn, at)]
        if isinstance(msg, StreamStartMessage):
            if self._begin is not None:
                raise DecodeError(f"Stream Start at {where} inside transaction {self._begin.xid}")
            stream = self._streams.get(msg.xid)
            if stream is not None and msg.first_segment:
                # The server restarted streaming this transaction from its beginning.
                self._drop(stream)
                stream = None
            if stream is None:
                stream = self._streams[msg.xid] = _StreamedTx(msg.xid)
            self._stream = stream
            return _NO_ITEMS
        if isinstance(msg, StreamStopMessage):
            if self._stream is None:
                raise DecodeError(f"Stream Stop at {where} outside a stream block")
            self._stream = None
            return _NO_ITEMS
        if isinstance(msg, StreamCommitMessage):
            if self._begin is not None:
                raise DecodeError(f"Stream Commit at {where} inside transaction {self._begin.xid}")
            stream = self._streams.pop(msg.xid, None)
            if stream is None:
                stream = _StreamedTx(msg.xid)  # nothing buffered: an empty transaction
            self._mem -= stream.mem
            self._replaying = True
            self._replaying_tx = stream
            self._replay = self._replay_stream(stream, msg)
            return self._replay
        if isinstance(msg, StreamAbortMessage):
            stream = self._streams.get(msg.xid)
            if stream is not None:
                if msg.subxid == msg.xid:
                    del self._streams[msg.xid]
                    self._drop(stream)
                else:
                    stream.aborted.add(msg.subxid)
            return _NO_ITEMS
        raise DecodeError(f"unexpected message {msg!r} at {where}")  # pragma: no cover

    # ------------------------------------------------------------------ streaming

    def _buffer(
        self,
        stream: _StreamedTx,
        payload: bytes | bytearray | memoryview,
        offset: int,
        kind: int,
        wal_start: Lsn,
    ) -> None:
        if kind in XID_CARRYING:
            if len(payload) - offset < 5:
                raise DecodeError(
                    f"streamed message type {chr(kind)!r} at {format_lsn(wal_start)} is too "
                    "short to carry its xid"
                )
        elif kind == ORIGIN:
            msg = self._decoder.decode(payload, offset, True)
            assert isinstance(msg, OriginMessage)
            stream.origin = msg.name
            return
        else:
            # Validates and raises the right DecodeError for garbage; anything
            # well-formed here (Begin, Commit, Stream Start...) is out of place.
            self._decoder.decode(payload, offset, streamed=True)
            raise DecodeError(
                f"message type {chr(kind)!r} at {format_lsn(wal_start)} inside the stream "
                f"block of xid {stream.xid}"
            )
        data = payload if not offset and type(payload) is bytes else bytes(payload[offset:])
        if stream.file is not None:
            stream.append_to_file(data)
            return
        size = sys.getsizeof(data) + _RECORD_OVERHEAD
        stream.payloads.append(data)
        stream.mem += size
        self._mem += size
        if self._mem > self._limit:
            self._spill_until_under_limit()

    def _spill_until_under_limit(self) -> None:
        while self._mem > self._limit:
            biggest = max(self._streams.values(), key=lambda s: s.mem)
            if biggest.mem == 0:
                return
            self._mem -= biggest.spill(self._spill_dir)

    def _drop(self, stream: _StreamedTx) -> None:
        self._mem -= stream.mem
        stream.discard()
        if self._stream is stream:
            self._stream = None

    def _replay_stream(self, stream: _StreamedTx, msg: StreamCommitMessage) -> Iterator[Item]:
        try:
            yield Begin(msg.xid, msg.commit_lsn, msg.committed_at, stream.origin)
            decode = self._decoder.decode
            aborted = stream.aborted
            for subxid, payload in stream.records():
                if aborted and subxid in aborted:
                    continue
                m = decode(payload, 0, True)
                if type(m) is Change:
                    yield m
                elif type(m) is LogicalMessage:
                    yield _message_change(m)
                # Relation / Type: the decoder applied them to its caches.
            yield Commit(msg.xid, msg.commit_lsn, msg.end_lsn, msg.committed_at)
        finally:
            stream.discard()
            self._replaying = False
            self._replay = None
            self._replaying_tx = None

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Drop every buffered streamed transaction and remove its spill file."""
        if self._replaying_tx is not None:
            # An unstarted generator's ``finally`` never runs: clean up here.
            self._replaying_tx.discard()
            self._replaying_tx = None
        self._replaying = False
        self._replay = None
        for stream in self._streams.values():
            stream.discard()
        self._streams.clear()
        self._stream = None
        self._mem = 0

    def __enter__(self) -> TransactionAssembler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message_change(msg: LogicalMessage) -> Change:
    return Change(
        "message", prefix=msg.prefix, content=msg.content, message_lsn=msg.lsn, xid=msg.xid
    )
