"""pgoutput decoder: every message type, built byte by byte from the protocol docs."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from walrelay.errors import DecodeError, UnknownRelation
from walrelay.model import UNCHANGED_TOAST, Change, Column, RawValue, Relation
from walrelay.source.pgoutput import (
    PG_EPOCH,
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

# --------------------------------------------------------------------------- builder

ColSpec = tuple[str, int, int, bool]  # name, type oid, typmod, is key
Val = bytes | None | object  # bytes -> 't', None -> 'n', UNCHANGED_TOAST -> 'u', Bin -> 'b'


class Bin(bytes):
    """A column value sent in binary format ('b')."""


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


class PG:
    """Builds pgoutput messages byte by byte (PostgreSQL 15, protocol 1 and 2)."""

    @staticmethod
    def begin(final_lsn: int, ts_us: int, xid: int) -> bytes:
        return b"B" + struct.pack("!QqI", final_lsn, ts_us, xid)

    @staticmethod
    def commit(commit_lsn: int, end_lsn: int, ts_us: int, flags: int = 0) -> bytes:
        return b"C" + struct.pack("!BQQq", flags, commit_lsn, end_lsn, ts_us)

    @staticmethod
    def origin(lsn: int, name: str) -> bytes:
        return b"O" + struct.pack("!Q", lsn) + _s(name)

    @staticmethod
    def relation(
        oid: int,
        schema: str,
        name: str,
        cols: Sequence[ColSpec],
        ident: str = "d",
        xid: int | None = None,
    ) -> bytes:
        out = b"R" + _xid(xid) + struct.pack("!I", oid) + _s(schema) + _s(name)
        out += ident.encode() + struct.pack("!H", len(cols))
        for cname, toid, typmod, key in cols:
            out += bytes([1 if key else 0]) + _s(cname) + struct.pack("!Ii", toid, typmod)
        return out

    @staticmethod
    def type_(oid: int, schema: str, name: str, xid: int | None = None) -> bytes:
        return b"Y" + _xid(xid) + struct.pack("!I", oid) + _s(schema) + _s(name)

    @staticmethod
    def tuple_(values: Sequence[Val]) -> bytes:
        out = struct.pack("!H", len(values))
        for v in values:
            if v is None:
                out += b"n"
            elif v is UNCHANGED_TOAST:
                out += b"u"
            elif isinstance(v, Bin):
                out += b"b" + struct.pack("!I", len(v)) + bytes(v)
            else:
                assert isinstance(v, bytes)
                out += b"t" + struct.pack("!I", len(v)) + v
        return out

    @classmethod
    def insert(cls, oid: int, new: Sequence[Val], xid: int | None = None) -> bytes:
        return b"I" + _xid(xid) + struct.pack("!I", oid) + b"N" + cls.tuple_(new)

    @classmethod
    def update(
        cls,
        oid: int,
        new: Sequence[Val],
        old: Sequence[Val] | None = None,
        old_kind: str = "K",
        xid: int | None = None,
    ) -> bytes:
        out = b"U" + _xid(xid) + struct.pack("!I", oid)
        if old is not None:
            out += old_kind.encode() + cls.tuple_(old)
        return out + b"N" + cls.tuple_(new)

    @classmethod
    def delete(
        cls, oid: int, old: Sequence[Val], old_kind: str = "K", xid: int | None = None
    ) -> bytes:
        return b"D" + _xid(xid) + struct.pack("!I", oid) + old_kind.encode() + cls.tuple_(old)

    @staticmethod
    def truncate(oids: Sequence[int], options: int = 0, xid: int | None = None) -> bytes:
        out = b"T" + _xid(xid) + struct.pack("!IB", len(oids), options)
        return out + b"".join(struct.pack("!I", o) for o in oids)

    @staticmethod
    def message(
        lsn: int, prefix: str, content: bytes, transactional: bool = True, xid: int | None = None
    ) -> bytes:
        out = b"M" + _xid(xid) + struct.pack("!BQ", 1 if transactional else 0, lsn)
        return out + _s(prefix) + struct.pack("!I", len(content)) + content

    @staticmethod
    def stream_start(xid: int, first: bool = True) -> bytes:
        return b"S" + struct.pack("!IB", xid, 1 if first else 0)

    @staticmethod
    def stream_stop() -> bytes:
        return b"E"

    @staticmethod
    def stream_commit(xid: int, commit_lsn: int, end_lsn: int, ts_us: int, flags: int = 0) -> bytes:
        return b"c" + struct.pack("!IBQQq", xid, flags, commit_lsn, end_lsn, ts_us)

    @staticmethod
    def stream_abort(xid: int, subxid: int) -> bytes:
        return b"A" + struct.pack("!II", xid, subxid)


USERS_OID = 16384
USERS_COLS: list[ColSpec] = [
    ("id", 23, -1, True),
    ("name", 25, -1, False),
    ("bio", 25, -1, False),
    ("score", 1700, 655366, False),
]
ORDERS_OID = 16400
ORDERS_COLS: list[ColSpec] = [("order_id", 20, -1, True), ("total", 1700, -1, False)]

TS_US = 789_012_345_678_901  # 2025-01-01 02:05:45.678901 UTC, in us since 2000-01-01
TS = PG_EPOCH + timedelta(microseconds=TS_US)


def users_rel(decoder: Decoder) -> Relation:
    msg = decoder.decode(PG.relation(USERS_OID, "public", "users", USERS_COLS))
    assert isinstance(msg, RelationMessage)
    return msg.relation


@pytest.fixture
def dec() -> Decoder:
    d = Decoder()
    users_rel(d)
    d.decode(PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, ident="f"))
    return d


# --------------------------------------------------------------------------- control messages


def test_begin() -> None:
    msg = Decoder().decode(PG.begin(0x1_6B37_4800, TS_US, 742))
    assert msg == BeginMessage(final_lsn=0x1_6B37_4800, committed_at=TS, xid=742)
    assert msg.committed_at.tzinfo is UTC
    assert msg.committed_at == datetime(2025, 1, 1, 2, 5, 45, 678901, tzinfo=UTC)


def test_timestamps_are_microseconds_since_2000_utc() -> None:
    assert pg_timestamp(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp(86_400_000_001) == datetime(2000, 1, 2, 0, 0, 0, 1, tzinfo=UTC)
    assert pg_timestamp(-1_000_000) == datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(DecodeError, match="timestamp out of range"):
        pg_timestamp(2**62)


def test_commit() -> None:
    msg = Decoder().decode(PG.commit(0x16B3748, 0x16B3778, TS_US))
    assert msg == CommitMessage(flags=0, commit_lsn=0x16B3748, end_lsn=0x16B3778, committed_at=TS)


def test_origin() -> None:
    msg = Decoder().decode(PG.origin(0xABCDEF, "node_a"))
    assert msg == OriginMessage(origin_lsn=0xABCDEF, name="node_a")


def test_relation_fills_cache_and_replaces_on_schema_change() -> None:
    d = Decoder()
    rel = users_rel(d)
    assert rel == Relation(
        oid=USERS_OID,
        schema="public",
        name="users",
        replica_identity="d",
        columns=(
            Column("id", 23, -1, True),
            Column("name", 25, -1, False),
            Column("bio", 25, -1, False),
            Column("score", 1700, 655366, False),
        ),
    )
    assert d.relations[USERS_OID] is rel
    assert rel.key_indexes == (0,)
    msg = d.decode(PG.relation(USERS_OID, "public", "users", [("id", 20, -1, True)], ident="f"))
    assert isinstance(msg, RelationMessage)
    assert msg.xid is None
    assert d.relations[USERS_OID].columns == (Column("id", 20, -1, True),)
    assert d.relations[USERS_OID].replica_identity == "f"


def test_relation_streamed_carries_xid() -> None:
    d = Decoder()
    msg = d.decode(PG.relation(1, "s", "t", [("a", 25, -1, False)], ident="n", xid=99), 0, True)
    assert isinstance(msg, RelationMessage)
    assert msg.xid == 99
    assert msg.relation.replica_identity == "n"
    assert msg.relation.qualified_name == "s.t"


def test_relation_with_unicode_names() -> None:
    d = Decoder()
    msg = d.decode(PG.relation(5, "schéma", "tâble", [("clé", 25, -1, True)]))
    assert isinstance(msg, RelationMessage)
    assert msg.relation.qualified_name == "schéma.tâble"
    assert msg.relation.columns[0].name == "clé"


def test_type_message() -> None:
    d = Decoder()
    assert d.decode(PG.type_(70000, "public", "mood")) == TypeMessage(70000, "public", "mood")
    assert d.types[70000] == ("public", "mood")
    assert d.decode(PG.type_(70001, "public", "x", xid=5), 0, True) == TypeMessage(
        70001, "public", "x", 5
    )


def test_stream_control_messages_and_in_stream_tracking() -> None:
    d = Decoder()
    states = [d.in_stream]
    assert d.decode(PG.stream_start(1234, first=True)) == StreamStartMessage(1234, True)
    states.append(d.in_stream)
    assert d.decode(PG.stream_stop()) == StreamStopMessage()
    states.append(d.in_stream)
    assert states == [False, True, False]
    assert d.decode(PG.stream_start(1234, first=False)) == StreamStartMessage(1234, False)
    d.decode(PG.stream_stop())
    assert d.decode(PG.stream_commit(1234, 0x500, 0x530, TS_US)) == StreamCommitMessage(
        1234, 0, 0x500, 0x530, TS
    )
    assert d.decode(PG.stream_abort(1234, 1240)) == StreamAbortMessage(1234, 1240)


# --------------------------------------------------------------------------- row changes


def test_insert_values_null_toast_binary(dec: Decoder) -> None:
    msg = dec.decode(PG.insert(USERS_OID, [b"42", None, UNCHANGED_TOAST, Bin(b"\x00\x01")]))
    assert isinstance(msg, Change)
    assert msg.op == "insert"
    assert msg.relation is dec.relations[USERS_OID]
    assert msg.new == (b"42", None, UNCHANGED_TOAST, b"\x00\x01")
    assert type(msg.new[0]) is bytes
    assert msg.old is None and msg.old_kind is None and msg.xid is None


def test_insert_empty_string_is_not_null(dec: Decoder) -> None:
    msg = dec.decode(PG.insert(ORDERS_OID, [b"", b"1.50"]))
    assert isinstance(msg, Change)
    assert msg.new == (b"", b"1.50")


def test_insert_inside_stream_block_reads_xid(dec: Decoder) -> None:
    dec.decode(PG.stream_start(500))
    msg = dec.decode(PG.insert(ORDERS_OID, [b"1", b"9.99"], xid=501))
    assert isinstance(msg, Change)
    assert msg.xid == 501
    assert msg.new == (b"1", b"9.99")
    dec.decode(PG.stream_stop())
    # outside the block the same bytes no longer parse (the xid shifts everything)
    with pytest.raises(DecodeError):
        dec.decode(PG.insert(ORDERS_OID, [b"1", b"9.99"], xid=501))


def test_streamed_flag_overrides_block_state(dec: Decoder) -> None:
    msg = dec.decode(PG.insert(ORDERS_OID, [b"7", None], xid=77), 0, True)
    assert isinstance(msg, Change)
    assert msg.xid == 77
    assert not dec.in_stream


def test_update_without_old_tuple(dec: Decoder) -> None:
    msg = dec.decode(PG.update(USERS_OID, [b"1", b"bob", UNCHANGED_TOAST, None]))
    assert isinstance(msg, Change)
    assert msg.op == "update"
    assert msg.new == (b"1", b"bob", UNCHANGED_TOAST, None)
    assert msg.old is None and msg.old_kind is None


def test_update_with_old_key(dec: Decoder) -> None:
    msg = dec.decode(PG.update(USERS_OID, [b"2", b"bob", None, None], old=[b"1", None, None, None]))
    assert isinstance(msg, Change)
    assert msg.old_kind == "K"
    assert msg.old == (b"1", None, None, None)
    assert msg.new == (b"2", b"bob", None, None)


def test_update_with_old_full_row_streamed(dec: Decoder) -> None:
    raw = PG.update(ORDERS_OID, [b"1", b"2.00"], old=[b"1", b"1.00"], old_kind="O", xid=900)
    msg = dec.decode(raw, 0, True)
    assert isinstance(msg, Change)
    assert (msg.old_kind, msg.old, msg.new, msg.xid) == ("O", (b"1", b"1.00"), (b"1", b"2.00"), 900)


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(dec: Decoder, kind: str) -> None:
    msg = dec.decode(PG.delete(ORDERS_OID, [b"5", None if kind == "K" else b"3"], old_kind=kind))
    assert isinstance(msg, Change)
    assert msg.op == "delete"
    assert msg.old_kind == kind
    assert msg.old == (b"5", None if kind == "K" else b"3")
    assert msg.new is None
    assert msg.relation is dec.relations[ORDERS_OID]


@pytest.mark.parametrize(
    ("options", "cascade", "restart"),
    [(0, False, False), (1, True, False), (2, False, True), (3, True, True)],
)
def test_truncate_options(dec: Decoder, options: int, cascade: bool, restart: bool) -> None:
    msg = dec.decode(PG.truncate([ORDERS_OID, USERS_OID], options))
    assert isinstance(msg, Change)
    assert msg.op == "truncate"
    assert msg.relations == (dec.relations[ORDERS_OID], dec.relations[USERS_OID])
    assert msg.relation is dec.relations[ORDERS_OID]
    assert (msg.cascade, msg.restart_identity) == (cascade, restart)


def test_truncate_streamed(dec: Decoder) -> None:
    msg = dec.decode(PG.truncate([USERS_OID], 0, xid=31), 0, True)
    assert isinstance(msg, Change)
    assert msg.xid == 31
    assert msg.relations == (dec.relations[USERS_OID],)


@pytest.mark.parametrize("transactional", [True, False])
def test_logical_message(transactional: bool) -> None:
    msg = Decoder().decode(PG.message(0x99, "outbox", b'{"a": 1}\x00\xff', transactional))
    assert msg == LogicalMessage(transactional, 0x99, "outbox", b'{"a": 1}\x00\xff', None)


def test_logical_message_streamed_and_empty() -> None:
    msg = Decoder().decode(PG.message(0x10, "", b"", True, xid=12), 0, True)
    assert msg == LogicalMessage(True, 0x10, "", b"", 12)


def test_unknown_relation_names_the_oid(dec: Decoder) -> None:
    for raw in (
        PG.insert(777, [b"x"]),
        PG.update(777, [b"x"]),
        PG.delete(777, [b"x"]),
        PG.truncate([ORDERS_OID, 777]),
    ):
        with pytest.raises(UnknownRelation, match="777"):
            dec.decode(raw)


def test_accepts_memoryview_bytearray_and_offset(dec: Decoder) -> None:
    raw = PG.insert(ORDERS_OID, [b"1", b"2"])
    frame = b"w" + b"\x00" * 24 + raw  # an XLogData frame: payload starts at 25
    for data, offset in ((memoryview(raw), 0), (bytearray(raw), 0), (frame, 25)):
        msg = dec.decode(data, offset)
        assert isinstance(msg, Change)
        assert msg.new == (b"1", b"2")
        assert all(type(v) is bytes for v in msg.new)


# --------------------------------------------------------------------------- malformed input


VALID = [
    PG.begin(1, 2, 3),
    PG.commit(1, 2, 3),
    PG.origin(1, "o"),
    PG.relation(9, "s", "t", [("a", 23, -1, True)]),
    PG.type_(1, "s", "t"),
    PG.insert(ORDERS_OID, [b"1", b"22"]),
    PG.update(ORDERS_OID, [b"1", b"2"], old=[b"1", b"3"], old_kind="O"),
    PG.delete(ORDERS_OID, [b"1", None]),
    PG.truncate([ORDERS_OID], 1),
    PG.message(5, "p", b"hello"),
    PG.stream_start(1),
    PG.stream_commit(1, 2, 3, 4),
    PG.stream_abort(1, 2),
]


@pytest.mark.parametrize("raw", VALID, ids=lambda r: chr(r[0]))
def test_every_truncation_is_a_decode_error(dec: Decoder, raw: bytes) -> None:
    assert dec.decode(raw) is not None
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            dec.decode(raw[:cut])


@pytest.mark.parametrize("raw", VALID, ids=lambda r: chr(r[0]))
def test_trailing_bytes_are_a_decode_error(dec: Decoder, raw: bytes) -> None:
    with pytest.raises(DecodeError):
        dec.decode(raw + b"\x00")


def test_empty_and_unknown_type() -> None:
    with pytest.raises(DecodeError, match="empty"):
        Decoder().decode(b"")
    with pytest.raises(DecodeError, match="unknown pgoutput message type 'Z'"):
        Decoder().decode(b"Z\x00\x00")
    with pytest.raises(DecodeError, match="0x01"):
        Decoder().decode(b"\x01")


def test_two_phase_messages_are_refused_with_a_fix() -> None:
    with pytest.raises(DecodeError, match="two-phase") as err:
        Decoder().decode(b"b" + b"\x00" * 28)
    assert err.value.fix is not None and "two_phase" in err.value.fix


def test_bad_tuple_kind(dec: Decoder) -> None:
    raw = bytearray(PG.insert(ORDERS_OID, [b"1", b"2"]))
    raw[8] = ord("x")  # first column kind
    with pytest.raises(DecodeError, match="unknown tuple column kind 'x'"):
        dec.decode(bytes(raw))


def test_bad_tuple_markers(dec: Decoder) -> None:
    with pytest.raises(DecodeError, match="Insert: expected 'N'"):
        dec.decode(b"I" + struct.pack("!I", ORDERS_OID) + b"K" + PG.tuple_([b"1", b"2"]))
    with pytest.raises(DecodeError, match="Delete: expected 'K' or 'O'"):
        dec.decode(b"D" + struct.pack("!I", ORDERS_OID) + b"N" + PG.tuple_([b"1", b"2"]))
    with pytest.raises(DecodeError, match="Update: expected"):
        dec.decode(b"U" + struct.pack("!I", ORDERS_OID) + b"X" + PG.tuple_([b"1", b"2"]))
    with pytest.raises(DecodeError, match="Update: expected"):
        raw = PG.update(ORDERS_OID, [b"1", b"2"], old=[b"1", b"2"])
        dec.decode(raw.replace(b"N\x00\x02", b"Q\x00\x02"))


def test_column_count_must_match_relation(dec: Decoder) -> None:
    with pytest.raises(DecodeError, match=r"has 3 columns.*described 2"):
        dec.decode(PG.insert(ORDERS_OID, [b"1", b"2", b"3"]))


def test_value_length_past_end(dec: Decoder) -> None:
    raw = b"I" + struct.pack("!I", ORDERS_OID) + b"N\x00\x02" + b"t" + struct.pack("!I", 1000)
    with pytest.raises(DecodeError):
        dec.decode(raw + b"abc" + b"n")
    huge = b"I" + struct.pack("!I", ORDERS_OID) + b"N\x00\x02" + b"n" + b"t\xff\xff\xff\xff"
    with pytest.raises(DecodeError):
        dec.decode(huge + b"x")


def test_bad_strings_and_fields() -> None:
    d = Decoder()
    with pytest.raises(DecodeError, match="malformed") as info:
        d.decode(b"O" + struct.pack("!Q", 1) + b"\xff\xfe\x00")  # invalid UTF-8
    assert "not valid UTF-8" in str(info.value) and "rename" in str(info.value)
    with pytest.raises(DecodeError, match="malformed"):
        d.decode(b"O" + struct.pack("!Q", 1) + b"unterminated")
    with pytest.raises(DecodeError, match="replica identity"):
        d.decode(PG.relation(1, "s", "t", [], ident="z"))
    with pytest.raises(DecodeError, match="timestamp out of range"):
        d.decode(PG.begin(1, 2**63 - 1, 3))
    with pytest.raises(DecodeError, match="content length"):
        d.decode(PG.message(1, "p", b"abc")[:-1] + b"")
    with pytest.raises(DecodeError, match="Truncate"):
        d.decode(b"T" + struct.pack("!IB", 2**32 - 1, 0) + b"\x00" * 8)


def test_errors_never_leak_low_level_exceptions(dec: Decoder) -> None:
    # A tuple with many columns declared but no data, a Relation declaring 65535 columns.
    bad: list[bytes] = [
        b"I" + struct.pack("!I", ORDERS_OID) + b"N\x00\x02",
        PG.relation(1, "s", "t", [])[:-2] + b"\xff\xff",
        b"R" + struct.pack("!I", 1),
        b"M\x01" + struct.pack("!Q", 1),
    ]
    for raw in bad:
        with pytest.raises(DecodeError):
            dec.decode(raw)


def _values(n: int) -> list[RawValue]:
    return [str(i).encode() for i in range(n)]


def test_wide_row_round_trip() -> None:
    d = Decoder()
    cols = [(f"c{i}", 25, -1, i == 0) for i in range(300)]
    d.decode(PG.relation(3, "s", "wide", cols))
    vals = _values(300)
    msg = d.decode(PG.insert(3, vals))
    assert isinstance(msg, Change)
    assert msg.new == tuple(vals)
