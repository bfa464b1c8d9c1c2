"""Fuzzing: arbitrary bytes give a decoded message or DecodeError, never anything else."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_pgoutput import (
    ORDERS_COLS,
    ORDERS_OID,
    PG,
    USERS_COLS,
    USERS_OID,
    VALID,
)
from walrelay.errors import DecodeError
from walrelay.model import UNCHANGED_TOAST, Change
from walrelay.source.pgoutput import Decoder, Message
from walrelay.source.transactions import TransactionAssembler

NOW = datetime(2024, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STREAMED_VALID = [
    PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=5),
    PG.type_(7, "s", "t", xid=5),
    PG.insert(USERS_OID, [b"1", None, UNCHANGED_TOAST, b"2"], xid=5),
    PG.update(ORDERS_OID, [b"1", b"2"], old=[b"1", None], xid=6),
    PG.delete(ORDERS_OID, [b"1", b"2"], old_kind="O", xid=6),
    PG.truncate([ORDERS_OID, USERS_OID], 3, xid=5),
    PG.message(9, "pfx", b"body", True, xid=5),
    PG.stream_stop(),
]
SEEDS = [
    *VALID,
    PG.insert(USERS_OID, [b"1", None, UNCHANGED_TOAST, b"2"]),
    PG.update(USERS_OID, [b"1", b"a", b"b", b"c"]),
    PG.relation(USERS_OID, "public", "users", USERS_COLS),
    PG.message(1, "p", b"x", transactional=False),
    PG.stream_stop(),
]


def fresh_decoder() -> Decoder:
    d = Decoder()
    d.decode(PG.relation(USERS_OID, "public", "users", USERS_COLS))
    d.decode(PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS))
    return d


def decode_or_error(d: Decoder, data: bytes, streamed: bool | None) -> Message | None:
    try:
        msg = d.decode(data, 0, streamed)
    except DecodeError:  # includes UnknownRelation
        return None
    assert msg is not None
    if isinstance(msg, Change):
        assert msg.relation is None or msg.relation.oid in d.relations
    return msg


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("t"), ord("n"), ord("u")]))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([None, True, False]))
def test_random_bytes(data: bytes, streamed: bool | None) -> None:
    decode_or_error(fresh_decoder(), data, streamed)


@FUZZ
@given(st.sampled_from(b"BMCORYIUDTSEcA"), st.binary(max_size=120), st.booleans())
def test_random_bodies_after_valid_type_bytes(kind: int, body: bytes, streamed: bool) -> None:
    decode_or_error(fresh_decoder(), bytes([kind]) + body, streamed)


@FUZZ
@given(mutated(SEEDS), st.sampled_from([None, False]))
def test_mutated_valid_messages(data: bytes, streamed: bool | None) -> None:
    decode_or_error(fresh_decoder(), data, streamed)


@FUZZ
@given(mutated(STREAMED_VALID))
def test_mutated_streamed_messages(data: bytes) -> None:
    decode_or_error(fresh_decoder(), data, True)


def test_seeds_are_valid() -> None:
    """The seeds decode cleanly, so the mutations start from real messages."""
    for raw in SEEDS:
        assert decode_or_error(fresh_decoder(), raw, False) is not None
    for raw in STREAMED_VALID:
        assert decode_or_error(fresh_decoder(), raw, True) is not None


SESSION = [
    PG.relation(USERS_OID, "public", "users", USERS_COLS),
    PG.begin(0x100, 5, 10),
    PG.origin(1, "o"),
    PG.insert(USERS_OID, [b"1", None, UNCHANGED_TOAST, b"2"]),
    PG.commit(0x100, 0x108, 5),
    PG.stream_start(20),
    PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=20),
    PG.insert(ORDERS_OID, [b"1", b"2"], xid=21),
    PG.stream_stop(),
    PG.stream_abort(20, 21),
    PG.stream_start(20, first=False),
    PG.insert(ORDERS_OID, [b"3", b"4"], xid=20),
    PG.stream_stop(),
    PG.message(0x180, "hb", b"", transactional=False),
    PG.stream_commit(20, 0x200, 0x208, 6),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(SESSION), mutated(SESSION)), min_size=1, max_size=25),
    st.sampled_from([0, 64, 1 << 20]),
)
def test_assembler_survives_any_sequence(payloads: list[bytes], limit: int) -> None:
    """Whatever arrives, the assembler raises only DecodeError and cleans up its files."""
    asm = TransactionAssembler(memory_limit_bytes=limit, now=lambda: NOW)
    try:
        for p in payloads:
            try:
                for _ in asm.feed(p):
                    pass
            except DecodeError:
                continue
        files = asm.spill_files
    finally:
        asm.close()
    assert not any(os.path.exists(f) for f in files)


def test_valid_session_decodes_fully() -> None:
    asm = TransactionAssembler()
    items = [it for p in SESSION for it in asm.feed(p)]
    changes = [it for it in items if isinstance(it, Change)]
    assert [c.new for c in changes if c.op == "insert"] == [
        (b"1", None, UNCHANGED_TOAST, b"2"),
        (b"3", b"4"),
    ]
    assert [c.prefix for c in changes if c.op == "message"] == ["hb"]
    asm.close()
