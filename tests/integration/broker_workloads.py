"""Workloads and checks shared by the broker sink tests (test_sink_*.py).

Each test reads what its broker holds and hands it here as a list of
:class:`Seen` (one per message, in the order the broker keeps them for one
key: partition, stream or queue order).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.integration.support import execute
from walrelay.model import parse_event_id
from walrelay.testing.checker import Change, Delivery, Report, check

_names = itertools.count(1)


def unique_prefix(kind: str) -> str:
    """A name prefix of its own for each test: topics/streams of one broker are shared."""
    return f"{kind}{next(_names)}x{random.randrange(1 << 20):x}"


def retry_fast() -> dict[str, float]:
    return {"initial": 0.05, "max": 1.0}


@dataclass(frozen=True)
class Seen:
    """One message as a consumer saw it."""

    name: str  # topic / subject / stream / routing key
    envelope: dict[str, Any]
    msg_id: str | None = None  # the broker-level id (header, message_id, entry id)


# -- every op ----------------------------------------------------------------------

EVERY_OP_TABLES = ["public.items", "public.full_ident"]

EXPECTED_OPS: list[tuple[str, str | None]] = [
    ("insert", "public.items"),
    ("update", "public.items"),
    ("update", "public.items"),
    ("insert", "public.full_ident"),
    ("update", "public.full_ident"),
    ("delete", "public.full_ident"),
    ("message", None),
    ("delete", "public.items"),
    ("truncate", None),
]


def every_op_setup(db: str) -> None:
    execute(
        db,
        "create table items (id int primary key, name text)",
        "create table full_ident (id int primary key, v text)",
        "alter table full_ident replica identity full",
    )


def every_op_run(db: str) -> None:
    execute(db, "insert into items values (1, 'one')")
    execute(db, "update items set name = 'uno' where id = 1")
    execute(db, "update items set id = 2 where id = 1")
    execute(db, "insert into full_ident values (7, 'a')")
    execute(db, "update full_ident set v = 'b' where id = 7")
    execute(db, "delete from full_ident where id = 7")
    execute(db, "select pg_logical_emit_message(true, 'audit', 'hello broker')")
    execute(db, "delete from items where id = 2")
    execute(db, "truncate items, full_ident")


EVERY_OP_COPIES = len(EXPECTED_OPS) + 1  # the truncate goes to both tables' names


def check_every_op(seen: Sequence[Seen]) -> None:
    by_id: dict[str, list[Seen]] = defaultdict(list)
    for s in seen:
        by_id[s.envelope["id"]].append(s)
    ids = sorted(by_id, key=parse_event_id)
    got = [(by_id[i][0].envelope["op"], by_id[i][0].envelope["table"]) for i in ids]
    assert got == EXPECTED_OPS, got
    envs = [by_id[i][0].envelope for i in ids]
    ins, upd, key_upd, fi_ins, fi_upd, fi_del, msg, dele, trunc = envs
    assert ins["record"] == {"id": 1, "name": "one"} and ins["key"] == {"id": 1}
    assert upd["record"] == {"id": 1, "name": "uno"}
    assert key_upd["key"] == {"id": 2} and key_upd["old"] == {"id": 1}
    assert fi_upd["old"] == {"id": 7, "v": "a"}
    assert fi_del["record"] is None and fi_del["old"] == {"id": 7, "v": "b"}
    assert fi_ins["record"] == {"id": 7, "v": "a"}
    assert msg["prefix"] == "audit" and msg["content"] == "hello broker"
    assert dele["key"] == {"id": 2} and dele["record"] is None
    assert sorted(trunc["tables"]) == ["public.full_ident", "public.items"]
    # Row events went to their table's name, the message to the message name,
    # the truncate to both tables' names.
    for i in ids:
        copies = by_id[i]
        env = copies[0].envelope
        if env["op"] == "truncate":
            names = sorted(c.name for c in copies)
            assert len(names) == 2, names
            assert "full_ident" in names[0] and "items" in names[1], names
        else:
            assert len(copies) == 1, f"{i} delivered {len(copies)} times"
            if env["op"] == "message":
                assert "message" in copies[0].name, copies[0].name
            else:
                assert env["table"].split(".")[1] in copies[0].name, copies[0].name


# -- per-key order -----------------------------------------------------------------


def per_key_setup(db: str) -> None:
    execute(db, "create table counters (id int primary key, version int not null)")


def per_key_run(db: str, keys: int = 30, versions: int = 12) -> list[Change]:
    """Interleaved updates of ``keys`` rows; returns the expected changes."""
    rng = random.Random(7)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("insert into counters select g, 0 from generate_series(1, %s) g", (keys,))
        plan = [k for k in range(1, keys + 1) for _ in range(versions)]
        rng.shuffle(plan)
        for k in plan:
            conn.execute("update counters set version = version + 1 where id = %s", (k,))
    return [Change((k, v), k, v) for k in range(1, keys + 1) for v in range(versions + 1)]


def counter_deliveries(seen: Sequence[Seen]) -> list[Delivery]:
    out = []
    for s in seen:
        rec = s.envelope["record"]
        out.append(Delivery((rec["id"], rec["version"]), rec["id"], rec["version"], s.msg_id))
    return out


# -- a steady stream, for killing the broker in the middle ---------------------------


LEDGER_TABLE = "public.ledger"


def ledger_setup(db: str) -> None:
    execute(db, "create table ledger (id int primary key, version int not null)")


class LedgerWriter:
    """Commits small transactions in a thread: transaction ``i`` inserts ``rows``
    new rows (version 0) and bumps the previous transaction's rows to version 1."""

    def __init__(self, db: str, *, transactions: int = 600, rows: int = 5) -> None:
        self.db = db
        self.transactions = transactions
        self.rows = rows
        self.committed = 0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> LedgerWriter:
        self._thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the writer did not finish"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with psycopg.connect(self.db, autocommit=False) as conn:
                r = self.rows
                for i in range(self.transactions):
                    conn.execute(
                        "insert into ledger select g, 0 from generate_series(%s::int, %s::int) g",
                        (i * r, i * r + r - 1),
                    )
                    if i:
                        conn.execute(
                            "update ledger set version = 1 where id between %s and %s",
                            ((i - 1) * r, i * r - 1),
                        )
                    conn.commit()
                    self.committed = i + 1
                    time.sleep(0.004)  # spread the stream over a few seconds
        except BaseException as exc:  # reported by join()
            self.error = exc

    def expected(self) -> list[Change]:
        total = self.transactions * self.rows
        out = [Change((i, 0), i, 0) for i in range(total)]
        out += [Change((i, 1), i, 1) for i in range(total - self.rows)]
        return out

    @property
    def events(self) -> int:
        return len(self.expected())


def check_ledger(writer: LedgerWriter, seen: Sequence[Seen], *, allow_duplicates: bool) -> Report:
    report = check(writer.expected(), counter_deliveries(seen))
    assert report.ok(allow_duplicates=allow_duplicates), report.summary(
        allow_duplicates=allow_duplicates
    )
    return report


def duplicate_ids(seen: Sequence[Seen]) -> Counter[str]:
    counts = Counter(s.msg_id for s in seen if s.msg_id is not None)
    return Counter({k: n - 1 for k, n in counts.items() if n > 1})
