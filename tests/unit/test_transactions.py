"""TransactionAssembler: normal and streamed transactions, aborts, spilling."""

from __future__ import annotations

import gc
import os
import struct
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.unit.test_pgoutput import (
    ORDERS_COLS,
    ORDERS_OID,
    PG,
    TS,
    TS_US,
    USERS_COLS,
    USERS_OID,
)
from walrelay.errors import DecodeError, UnknownRelation
from walrelay.model import UNCHANGED_TOAST, Begin, Change, Column, Commit
from walrelay.source.transactions import Item, TransactionAssembler

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

USERS_R = PG.relation(USERS_OID, "public", "users", USERS_COLS)
ORDERS_R = PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS)


def run(asm: TransactionAssembler, payloads: Iterable[bytes]) -> list[Item]:
    out: list[Item] = []
    for i, p in enumerate(payloads):
        out.extend(asm.feed(p, 0x1000 + i))
    return out


def summary(items: Iterable[Item]) -> list[tuple[object, ...]]:
    """Items as comparable tuples: relation schema included, so schema mix-ups show."""
    out: list[tuple[object, ...]] = []
    for it in items:
        if isinstance(it, Begin):
            out.append(("B", it.xid, it.commit_lsn, it.committed_at, it.origin))
        elif isinstance(it, Commit):
            out.append(("C", it.xid, it.commit_lsn, it.end_lsn, it.committed_at))
        else:
            rel = it.relation
            cols = tuple(c.name for c in rel.columns) if rel else None
            out.append((it.op, cols, it.new, it.old, it.old_kind, it.xid))
    return out


@pytest.fixture
def asm(tmp_path: Path) -> Iterable[TransactionAssembler]:
    a = TransactionAssembler(spill_dir=str(tmp_path), now=lambda: NOW)
    yield a
    a.close()


# --------------------------------------------------------------------------- normal transactions


def test_normal_transaction(asm: TransactionAssembler) -> None:
    assert list(asm.feed(USERS_R, 0x10)) == []
    assert asm.relations[USERS_OID].name == "users"
    assert list(asm.feed(PG.begin(0x2000, TS_US, 700), 0x20)) == []  # Begin held back
    assert asm.in_transaction
    items = list(asm.feed(PG.insert(USERS_OID, [b"1", b"ann", UNCHANGED_TOAST, None]), 0x30))
    assert len(items) == 2
    begin, ins = items
    assert begin == Begin(xid=700, commit_lsn=0x2000, committed_at=TS, origin=None)
    assert isinstance(ins, Change)
    assert ins.op == "insert"
    assert ins.new == (b"1", b"ann", UNCHANGED_TOAST, None)
    assert ins.relation is asm.relations[USERS_OID]
    assert ins.xid is None

    raw = PG.update(USERS_OID, [b"2", b"b", None, None], old=[b"1", None, None, None])
    upd = list(asm.feed(raw, 0x40))
    assert [(c.op, c.old, c.old_kind, c.new) for c in upd if isinstance(c, Change)] == [
        ("update", (b"1", None, None, None), "K", (b"2", b"b", None, None))
    ]
    dele = list(asm.feed(PG.delete(USERS_OID, [b"2", b"b", b"x", b"1"], old_kind="O"), 0x50))
    assert isinstance(dele[0], Change)
    assert (dele[0].op, dele[0].old_kind, dele[0].old) == ("delete", "O", (b"2", b"b", b"x", b"1"))
    end = list(asm.feed(PG.commit(0x2000, 0x2030, TS_US), 0x60))
    assert end == [Commit(xid=700, commit_lsn=0x2000, end_lsn=0x2030, committed_at=TS)]
    assert not asm.in_transaction


def test_origin_is_on_the_begin_when_it_is_returned(asm: TransactionAssembler) -> None:
    asm.feed(ORDERS_R)
    assert list(asm.feed(PG.begin(0x3000, TS_US, 9))) == []
    assert list(asm.feed(PG.origin(0xFEED, "east"))) == []
    items = list(asm.feed(PG.insert(ORDERS_OID, [b"1", b"2"])))
    assert isinstance(items[0], Begin)
    assert items[0].origin == "east"
    assert items[0].xid == 9


def test_relation_inside_transaction_applies_immediately(asm: TransactionAssembler) -> None:
    out = run(
        asm,
        [
            PG.begin(0x4000, TS_US, 10),
            ORDERS_R,
            PG.insert(ORDERS_OID, [b"1", b"2"]),
            PG.relation(ORDERS_OID, "shop", "orders", [*ORDERS_COLS, ("note", 25, -1, False)]),
            PG.type_(90000, "shop", "mood"),
            PG.insert(ORDERS_OID, [b"2", b"3", b"hi"]),
            PG.commit(0x4000, 0x4040, TS_US),
        ],
    )
    assert summary(out) == [
        ("B", 10, 0x4000, TS, None),
        ("insert", ("order_id", "total"), (b"1", b"2"), None, None, None),
        ("insert", ("order_id", "total", "note"), (b"2", b"3", b"hi"), None, None, None),
        ("C", 10, 0x4000, 0x4040, TS),
    ]
    assert asm.decoder.types[90000] == ("shop", "mood")


def test_transaction_with_only_a_commit_still_returns_begin(asm: TransactionAssembler) -> None:
    out = run(asm, [PG.begin(0x10, TS_US, 1), ORDERS_R, PG.commit(0x10, 0x18, TS_US)])
    assert summary(out) == [("B", 1, 0x10, TS, None), ("C", 1, 0x10, 0x18, TS)]


@pytest.mark.parametrize(
    ("options", "cascade", "restart"), [(0, False, False), (1, True, False), (3, True, True)]
)
def test_truncate(asm: TransactionAssembler, options: int, cascade: bool, restart: bool) -> None:
    out = run(
        asm,
        [
            USERS_R,
            ORDERS_R,
            PG.begin(0x50, TS_US, 5),
            PG.truncate([USERS_OID, ORDERS_OID], options),
            PG.commit(0x50, 0x58, TS_US),
        ],
    )
    tr = out[1]
    assert isinstance(tr, Change)
    assert tr.op == "truncate"
    assert tr.relation is asm.relations[USERS_OID]
    assert tr.relations == (asm.relations[USERS_OID], asm.relations[ORDERS_OID])
    assert (tr.cascade, tr.restart_identity) == (cascade, restart)


def test_transactional_message_is_a_change(asm: TransactionAssembler) -> None:
    out = run(
        asm,
        [
            PG.begin(0x60, TS_US, 6),
            PG.message(0x5F, "outbox", b'{"id": 1}', transactional=True),
            PG.commit(0x60, 0x68, TS_US),
        ],
    )
    assert isinstance(out[0], Begin) and out[0].commit_lsn == 0x60
    msg = out[1]
    assert isinstance(msg, Change)
    assert (msg.op, msg.prefix, msg.content, msg.message_lsn, msg.relation) == (
        "message",
        "outbox",
        b'{"id": 1}',
        0x5F,
        None,
    )
    assert isinstance(out[2], Commit) and out[2].end_lsn == 0x68


def test_non_transactional_message_is_its_own_transaction(asm: TransactionAssembler) -> None:
    out = list(asm.feed(PG.message(0x7000, "heartbeat", b"tick", transactional=False), 0x7000))
    assert len(out) == 3
    begin, change, commit = out
    # commit_lsn is message_lsn - 1: the message LSN is where its WAL record ends,
    # which can be exactly where a commit record starts (see the module docstring).
    assert begin == Begin(xid=0, commit_lsn=0x6FFF, committed_at=NOW)
    assert isinstance(change, Change)
    assert (change.op, change.prefix, change.content, change.message_lsn) == (
        "message",
        "heartbeat",
        b"tick",
        0x7000,
    )
    assert commit == Commit(xid=0, commit_lsn=0x6FFF, end_lsn=0x7000, committed_at=NOW)
    assert not asm.in_transaction


def test_default_clock_is_utc_now() -> None:
    a = TransactionAssembler()
    before = datetime.now(UTC)
    out = list(a.feed(PG.message(0x80, "p", b"", transactional=False)))
    assert isinstance(out[0], Begin)
    assert before <= out[0].committed_at <= datetime.now(UTC)
    assert out[0].committed_at.tzinfo is not None


def test_protocol_violations(asm: TransactionAssembler) -> None:
    asm.feed(ORDERS_R)
    with pytest.raises(DecodeError, match="outside a transaction"):
        asm.feed(PG.insert(ORDERS_OID, [b"1", b"2"]), 0x16B3748)
    with pytest.raises(DecodeError, match="Commit at 0/99 outside a transaction"):
        asm.feed(PG.commit(1, 2, 3), 0x99)
    with pytest.raises(DecodeError, match="transactional logical message"):
        asm.feed(PG.message(1, "p", b"", transactional=True))
    with pytest.raises(DecodeError, match="Stream Stop"):
        asm.feed(PG.stream_stop())
    asm.feed(PG.begin(1, 2, 3))
    with pytest.raises(DecodeError, match="while xid 3 is open"):
        asm.feed(PG.begin(4, 5, 6))
    with pytest.raises(DecodeError, match="Stream Start"):
        asm.feed(PG.stream_start(8))
    with pytest.raises(UnknownRelation, match="4242"):
        asm.feed(PG.insert(4242, [b"1"]))
    with pytest.raises(DecodeError, match="empty"):
        asm.feed(b"")


def test_feed_accepts_offset_and_memoryview(asm: TransactionAssembler) -> None:
    frame = b"w" + bytes(24)
    asm.feed(frame + ORDERS_R, offset=25)
    asm.feed(memoryview(PG.begin(0x90, TS_US, 1)))
    out = list(asm.feed(frame + PG.insert(ORDERS_OID, [b"1", b"2"]), offset=25))
    assert summary(out)[1] == ("insert", ("order_id", "total"), (b"1", b"2"), None, None, None)


# --------------------------------------------------------------------------- streamed transactions


def streamed_tx_with_interleaved_commit() -> list[bytes]:
    """Streamed xid 1000 (subxact 1001) interleaved with normal xid 2000 altering orders."""
    return [
        PG.stream_start(1000, first=True),
        PG.origin(0, "west"),
        PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=1000),
        PG.insert(ORDERS_OID, [b"1", b"10"], xid=1000),
        PG.insert(ORDERS_OID, [b"2", b"20"], xid=1001),
        PG.stream_stop(),
        # a normal transaction committing meanwhile, with a NEWER orders schema
        PG.begin(0x8000, TS_US, 2000),
        PG.relation(ORDERS_OID, "shop", "orders", [*ORDERS_COLS, ("v2", 25, -1, False)]),
        PG.insert(ORDERS_OID, [b"9", b"90", b"new"]),
        PG.commit(0x8000, 0x8040, TS_US),
        PG.stream_start(1000, first=False),
        PG.update(ORDERS_OID, [b"1", b"11"], old=[b"1", b"10"], old_kind="O", xid=1000),
        PG.delete(ORDERS_OID, [b"2", None], xid=1001),
        PG.message(0x8800, "audit", b"x", transactional=True, xid=1000),
        PG.truncate([ORDERS_OID], 2, xid=1000),
        PG.stream_stop(),
        PG.stream_commit(1000, 0x9000, 0x9038, TS_US + 5),
    ]


EXPECTED_INTERLEAVED = [
    ("B", 2000, 0x8000, TS, None),
    ("insert", ("order_id", "total", "v2"), (b"9", b"90", b"new"), None, None, None),
    ("C", 2000, 0x8000, 0x8040, TS),
    ("B", 1000, 0x9000, TS.replace(microsecond=TS.microsecond + 5), "west"),
    ("insert", ("order_id", "total"), (b"1", b"10"), None, None, 1000),
    ("insert", ("order_id", "total"), (b"2", b"20"), None, None, 1001),
    ("update", ("order_id", "total"), (b"1", b"11"), (b"1", b"10"), "O", 1000),
    ("delete", ("order_id", "total"), None, (b"2", None), "K", 1001),
    ("message", None, None, None, None, 1000),
    ("truncate", ("order_id", "total"), None, None, None, 1000),
    ("C", 1000, 0x9000, 0x9038, TS.replace(microsecond=TS.microsecond + 5)),
]


def test_streamed_transaction_replays_with_its_own_schema(asm: TransactionAssembler) -> None:
    payloads = streamed_tx_with_interleaved_commit()
    out: list[Item] = []
    for p in payloads[:-1]:
        out.extend(asm.feed(p))
    # the stream's Relation message was not applied while buffering
    assert len(asm.relations[ORDERS_OID].columns) == 3
    assert asm.open_streams == (1000,)
    replay = asm.feed(payloads[-1], 0x9000)
    assert not isinstance(replay, list)  # lazy
    out.extend(replay)
    assert summary(out) == EXPECTED_INTERLEAVED
    msg = out[-3]
    assert isinstance(msg, Change)
    assert (msg.prefix, msg.content, msg.message_lsn) == ("audit", b"x", 0x8800)
    tr = out[-2]
    assert isinstance(tr, Change) and tr.restart_identity and not tr.cascade
    # after the commit, pgoutput assumes we hold the stream's schema
    assert asm.relations[ORDERS_OID].columns == (
        Column("order_id", 20, -1, True),
        Column("total", 1700, -1, False),
    )
    assert list(asm.open_streams) == []
    assert asm.buffered_bytes == 0


def test_streamed_transaction_spilled_gives_identical_items(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    asm = TransactionAssembler(spill_dir=str(spill), memory_limit_bytes=0)
    payloads = streamed_tx_with_interleaved_commit()
    out: list[Item] = []
    for p in payloads[:-1]:
        out.extend(asm.feed(p))
        assert asm.buffered_bytes == 0
    files = list(spill.iterdir())
    assert len(files) == 1 and "xid1000" in files[0].name
    assert asm.spill_files == (str(files[0]),)
    out.extend(asm.feed(payloads[-1]))
    assert summary(out) == EXPECTED_INTERLEAVED
    assert list(spill.iterdir()) == []
    asm.close()


def test_two_interleaved_streams_and_whole_abort(asm: TransactionAssembler, tmp_path: Path) -> None:
    asm.feed(USERS_R)
    out = run(
        asm,
        [
            PG.stream_start(10),
            PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=10),
            PG.insert(ORDERS_OID, [b"10", b"1"], xid=10),
            PG.stream_stop(),
            PG.stream_start(20),
            PG.insert(USERS_OID, [b"20", None, None, None], xid=20),
            PG.stream_stop(),
            PG.stream_start(10, first=False),
            PG.insert(ORDERS_OID, [b"11", b"1"], xid=10),
            PG.stream_stop(),
            PG.stream_abort(10, 10),
        ],
    )
    assert out == []
    assert asm.open_streams == (20,)
    assert ORDERS_OID not in asm.relations  # the aborted stream's schema never applied
    out = list(asm.feed(PG.stream_commit(20, 0x100, 0x108, TS_US)))
    assert summary(out) == [
        ("B", 20, 0x100, TS, None),
        ("insert", ("id", "name", "bio", "score"), (b"20", None, None, None), None, None, 20),
        ("C", 20, 0x100, 0x108, TS),
    ]


def test_subtransaction_abort_skips_its_changes_and_nested_ones(asm: TransactionAssembler) -> None:
    out = run(
        asm,
        [
            PG.stream_start(50),
            PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=50),
            PG.insert(ORDERS_OID, [b"1", b"top"], xid=50),
            PG.insert(ORDERS_OID, [b"2", b"sub51"], xid=51),
            PG.insert(ORDERS_OID, [b"3", b"sub52-nested"], xid=52),
            PG.stream_stop(),
            # ROLLBACK TO the savepoint of 51: one Stream Abort per aborted subxact
            PG.stream_abort(50, 52),
            PG.stream_abort(50, 51),
            PG.stream_start(50, first=False),
            PG.insert(ORDERS_OID, [b"4", b"sub53"], xid=53),
            PG.stream_stop(),
            PG.stream_commit(50, 0x200, 0x208, TS_US),
        ],
    )
    assert [c.new for c in out if isinstance(c, Change)] == [(b"1", b"top"), (b"4", b"sub53")]
    assert [c.xid for c in out if isinstance(c, Change)] == [50, 53]


def test_aborted_subtransaction_schema_is_not_applied(asm: TransactionAssembler) -> None:
    # The subxact sent the Relation (ALTER TABLE inside it), then rolled back;
    # pgoutput re-sends the schema for later changes, as it does here.
    out = run(
        asm,
        [
            ORDERS_R,
            PG.stream_start(60),
            PG.relation(
                ORDERS_OID, "shop", "orders", [*ORDERS_COLS, ("tmp", 25, -1, False)], xid=61
            ),
            PG.insert(ORDERS_OID, [b"1", b"1", b"rolled back"], xid=61),
            PG.stream_stop(),
            PG.stream_abort(60, 61),
            PG.stream_start(60, first=False),
            PG.relation(ORDERS_OID, "shop", "orders", ORDERS_COLS, xid=60),
            PG.insert(ORDERS_OID, [b"2", b"2"], xid=60),
            PG.stream_stop(),
            PG.stream_commit(60, 0x300, 0x308, TS_US),
        ],
    )
    assert [c.new for c in out if isinstance(c, Change)] == [(b"2", b"2")]
    assert len(asm.relations[ORDERS_OID].columns) == 2


def test_whole_abort_removes_spill_file(tmp_path: Path) -> None:
    asm = TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=0)
    run(asm, [ORDERS_R, PG.stream_start(7), PG.insert(ORDERS_OID, [b"1", b"1"], xid=7)])
    assert len(list(tmp_path.iterdir())) == 1
    run(asm, [PG.stream_stop(), PG.stream_abort(7, 7)])
    assert list(tmp_path.iterdir()) == []
    assert asm.open_streams == ()


def test_close_removes_spill_files_even_of_an_unconsumed_replay(tmp_path: Path) -> None:
    asm = TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=0)
    run(asm, [ORDERS_R, PG.stream_start(7), PG.insert(ORDERS_OID, [b"1", b"1"], xid=7)])
    run(asm, [PG.stream_stop(), PG.stream_start(8), PG.insert(ORDERS_OID, [b"1", b"1"], xid=8)])
    asm.feed(PG.stream_stop())
    assert len(list(tmp_path.iterdir())) == 2
    asm.feed(PG.stream_commit(7, 1, 2, 3))  # never iterated
    with pytest.raises(RuntimeError, match="was fully consumed"):
        asm.feed(PG.begin(1, 2, 3))
    asm.close()
    assert list(tmp_path.iterdir()) == []
    # usable again after close()
    assert summary(asm.feed(PG.stream_commit(9, 0x10, 0x18, TS_US))) == [
        ("B", 9, 0x10, TS, None),
        ("C", 9, 0x10, 0x18, TS),
    ]


def test_context_manager_closes(tmp_path: Path) -> None:
    with TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=0) as asm:
        run(asm, [ORDERS_R, PG.stream_start(7), PG.insert(ORDERS_OID, [b"1", b"1"], xid=7)])
        assert list(tmp_path.iterdir())
    assert list(tmp_path.iterdir()) == []


def test_partial_replay_then_close(tmp_path: Path) -> None:
    asm = TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=0)
    rows = [PG.insert(ORDERS_OID, [str(i).encode(), b"1"], xid=7) for i in range(10)]
    run(asm, [ORDERS_R, PG.stream_start(7), *rows, PG.stream_stop()])
    it = iter(asm.feed(PG.stream_commit(7, 1, 2, 3)))
    assert isinstance(next(it), Begin)
    assert isinstance(next(it), Change)
    asm.close()
    assert list(tmp_path.iterdir()) == []


def test_stream_restart_from_first_segment_drops_old_buffer(asm: TransactionAssembler) -> None:
    out = run(
        asm,
        [
            ORDERS_R,
            PG.stream_start(70),
            PG.insert(ORDERS_OID, [b"old", b"1"], xid=70),
            PG.stream_stop(),
            PG.stream_start(70, first=True),
            PG.insert(ORDERS_OID, [b"new", b"1"], xid=70),
            PG.stream_stop(),
            PG.stream_commit(70, 0x10, 0x18, TS_US),
        ],
    )
    assert [c.new for c in out if isinstance(c, Change)] == [(b"new", b"1")]


def test_garbage_inside_a_stream_block(asm: TransactionAssembler) -> None:
    asm.feed(PG.stream_start(1))
    with pytest.raises(DecodeError, match="inside the stream block"):
        asm.feed(PG.begin(1, 2, 3))
    with pytest.raises(DecodeError, match="too short"):
        asm.feed(b"I\x00\x00")
    with pytest.raises(DecodeError):
        asm.feed(b"?")


def test_malformed_streamed_payload_fails_at_replay(asm: TransactionAssembler) -> None:
    run(asm, [ORDERS_R, PG.stream_start(3), b"I" + bytes(6), PG.stream_stop()])
    with pytest.raises(DecodeError):
        list(asm.feed(PG.stream_commit(3, 1, 2, 3)))
    # the failed replay released everything; the assembler still works
    assert summary(asm.feed(PG.stream_commit(4, 5, 6, TS_US))) == [
        ("B", 4, 5, TS, None),
        ("C", 4, 5, 6, TS),
    ]


def test_memory_limit_spills_biggest_buffer(tmp_path: Path) -> None:
    asm = TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=2000)
    asm.feed(ORDERS_R)
    small = PG.insert(ORDERS_OID, [b"1", b"x"], xid=1)
    big = PG.insert(ORDERS_OID, [b"1", b"y" * 100], xid=2)
    run(asm, [PG.stream_start(1), small, PG.stream_stop(), PG.stream_start(2)])
    for _ in range(20):
        asm.feed(big)
        assert asm.buffered_bytes <= 2000
    asm.feed(PG.stream_stop())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and "xid2" in files[0]  # the small one stayed in memory
    assert asm.buffered_bytes > 0
    out = list(asm.feed(PG.stream_commit(2, 0x10, 0x18, TS_US)))
    assert [c.new for c in out if isinstance(c, Change)] == [(b"1", b"y" * 100)] * 20
    assert list(tmp_path.iterdir()) == []
    out = list(asm.feed(PG.stream_commit(1, 0x20, 0x28, TS_US)))
    assert [c.new for c in out if isinstance(c, Change)] == [(b"1", b"x")]
    assert asm.buffered_bytes == 0


def test_large_streamed_transaction_stays_bounded(tmp_path: Path) -> None:
    """200k rows (~17 MB of payloads): neither buffering nor the lazy replay hold them.

    Memory is watched with ``sys.getallocatedblocks()`` (live pymalloc blocks):
    each buffered ~85-byte payload would be one more block, so 200k rows held
    in memory would show as ~200k blocks of growth.
    """
    rows = 200_000
    limit = 256 * 1024
    asm = TransactionAssembler(spill_dir=str(tmp_path), memory_limit_bytes=limit)
    asm.feed(USERS_R)
    asm.feed(PG.stream_start(4000))
    asm.feed(PG.relation(USERS_OID, "public", "users", USERS_COLS, xid=4000))
    # Insert(xid 4001, users): id, 40-byte name, NULL bio, score -- assembled cheaply.
    head = b"I" + struct.pack("!II", 4001, USERS_OID) + b"N\x00\x04"
    tail = b"t" + struct.pack("!I", 40) + b"p" * 40 + b"n" + b"t\x00\x00\x00\x031.5"
    assert head + b"t\x00\x00\x00\x011" + tail == PG.insert(
        USERS_OID, [b"1", b"p" * 40, None, b"1.5"], xid=4001
    )
    pack = struct.Struct("!I").pack
    feed = asm.feed
    gc.collect()
    base = sys.getallocatedblocks()
    growth = 0
    for i in range(rows):
        key = b"%d" % i
        feed(head + b"t" + pack(len(key)) + key + tail)
        if i % 5_000 == 0:
            assert asm.buffered_bytes <= limit
            growth = max(growth, sys.getallocatedblocks() - base)
    asm.feed(PG.stream_stop())
    spill_size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert spill_size > rows * 80  # the data went to disk ...
    assert growth < 20_000, growth  # ... not to memory

    count = 0
    last: object = None
    replay_growth = 0
    for item in asm.feed(PG.stream_commit(4000, 0xA000, 0xA100, TS_US)):
        if isinstance(item, Change):
            count += 1
            last = item.new[0] if item.new else None
            if count % 5_000 == 0:
                replay_growth = max(replay_growth, sys.getallocatedblocks() - base)
    assert replay_growth < 20_000, replay_growth  # the replay did not materialise it
    assert count == rows
    assert last == str(rows - 1).encode()
    assert list(tmp_path.iterdir()) == []
    asm.close()


def test_spill_dir_is_created_when_missing(tmp_path: Path) -> None:
    spill = tmp_path / "not" / "made" / "yet"
    asm = TransactionAssembler(spill_dir=str(spill), memory_limit_bytes=0)
    run(asm, [ORDERS_R, PG.stream_start(6), PG.insert(ORDERS_OID, [b"1", b"1"], xid=6)])
    (path,) = asm.spill_files
    assert os.path.dirname(path) == str(spill)
    asm.close()
    assert list(spill.iterdir()) == []


def test_spill_dir_default_is_tempdir() -> None:
    asm = TransactionAssembler(memory_limit_bytes=0)
    run(asm, [ORDERS_R, PG.stream_start(5), PG.insert(ORDERS_OID, [b"1", b"1"], xid=5)])
    (path,) = asm.spill_files
    assert os.path.exists(path)
    asm.close()
    assert not os.path.exists(path)
