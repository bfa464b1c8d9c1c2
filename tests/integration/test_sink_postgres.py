"""PostgreSQL sink against a real target database: ops, types, mapping, replays."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.integration.support import execute, make_config, running_engine, wait_for
from walrelay.config import PostgresSinkConfig
from walrelay.errors import PoisonEvent, SinkError
from walrelay.model import Event, format_event_id, format_lsn
from walrelay.sinks.base import SinkContext
from walrelay.sinks.postgres import PostgresSink
from walrelay.testing.pgcluster import PgCluster, scratch_database

_target_counter = itertools.count(1)


def pg_sink(dsn: str) -> PostgresSink:
    return PostgresSink(PostgresSinkConfig(dsn=dsn), SinkContext(destination="d"))


@pytest.fixture
def target(pg: PgCluster) -> Iterator[str]:
    with scratch_database(pg, f"target{next(_target_counter)}") as dsn:
        yield dsn


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def sink_dest(target: str, **sink: Any) -> dict[str, Any]:
    return {"name": "pg", "sink": {"type": "postgres", "dsn": target, **sink}}


AUDIT = """
create table audit (n bigserial primary key, tbl text, op text, row_data jsonb);
create function audit_fn() returns trigger language plpgsql as $$
begin
  insert into audit (tbl, op, row_data)
  values (tg_table_name, tg_op, to_jsonb(coalesce(new, old)));
  return null;
end $$;
"""


def add_audit(dsn: str, table: str) -> None:
    execute(
        dsn,
        f"create trigger audit_{table.replace('.', '_')} after insert or update or delete "
        f"on {table} for each row execute function audit_fn()",
    )


TYPES_DDL = (
    "create table {t} (id int primary key, n numeric(20,5), b bytea, j jsonb, a int[], "
    "ts timestamptz, iv interval, u uuid, t text, f float8, ok bool, d date, big text)"
)


async def _stream(db: str, target: str, table: str, statements: list[str]) -> None:
    """Run ``statements`` in ``db`` under an engine streaming ``table`` to
    ``target``, until every change they made is applied."""
    config = make_config(db, [table], [sink_dest(target)])
    async with running_engine(config) as engine:
        execute(db, *statements)
        n = len(statements)
        await wait_for(
            lambda: engine.destinations["pg"].delivered_total >= n, what=f"{n} events applied"
        )


async def test_every_op_and_type_matrix(db: str, target: str) -> None:
    execute(
        db, TYPES_DDL.format(t="kinds"), "alter table kinds alter column big set storage external"
    )
    execute(target, TYPES_DDL.format(t="kinds"))
    await _stream(
        db,
        target,
        "public.kinds",
        [
            "insert into kinds values (1, 12345678901234.12345, '\\x00ff',"
            " '{\"k\": [1, 2.5, null]}', '{1,2,3}', '2024-01-02 03:04:05.123456+02',"
            " '1 day 02:03:04.5',"
            " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'héllo\nworld', 'NaN', true, '2024-02-29',"
            " repeat('x', 10000))",
            "insert into kinds (id) values (2)",
            "insert into kinds (id, n, f) values (3, 'NaN', '-Infinity')",
            # an UPDATE that leaves the TOASTed column out of the change
            "update kinds set t = 'changed' where id = 1",
            # an UPDATE that changes the key and leaves the TOASTed column out
            "update kinds set id = 10 where id = 1",
            # an UPDATE that changes the key
            "update kinds set id = 20 where id = 2",
            "delete from kinds where id = 3",
        ],
    )
    cols = "id, row(n, b, j, a, ts, iv, u, t, f, ok, d, md5(big))::text"  # text: NaN = NaN
    want = rows(db, f"select {cols} from kinds order by id")
    got = rows(target, f"select {cols} from kinds order by id")
    assert got == want
    assert [r[0] for r in got] == [10, 20]


async def test_json_numbers_arrive_exactly(db: str, target: str) -> None:
    """Numbers a double cannot hold, in json/jsonb and numeric columns, and a
    json object giving a key twice: the rows are sent as JSON and cast by the
    target, every number as written."""
    ddl = "create table nums (id int primary key, j json, jb jsonb, n numeric, a numeric[])"
    execute(db, ddl)
    execute(target, ddl)
    await _stream(
        db,
        target,
        "public.nums",
        [
            "insert into nums values (1,"
            ' \'{"a": 1, "a": 2.50, "b": 12345678901234567890123, "c": 1e400}\','
            ' \'{"x": 0.1000000000000000000000001, "y": 1e400, "z": [1.50, -0.0]}\','
            " 123456789012345678901234567890.123456789000, '{1.10,2e-30}')",
            "insert into nums values (2, '[]', '\"text\"', 'NaN', '{}')",
        ],
    )
    cols = "id, j::jsonb::text, jb::text, n::text, a::text"
    assert rows(target, f"select {cols} from nums order by id") == rows(
        db, f"select {cols} from nums order by id"
    )


async def test_table_mapping_schema_and_truncate(db: str, target: str) -> None:
    execute(
        db, "create table a (id int primary key, v text)", "create table b (id int primary key)"
    )
    execute(
        target,
        "create schema replica",
        "create table replica.a_copy (id int primary key, v text, extra text default 'x')",
        "create table replica.b (id int primary key)",
    )
    config = make_config(
        db,
        ["public.a", "public.b"],
        [sink_dest(target, schema="replica", tables={"a": "a_copy"})],
    )
    async with running_engine(config) as engine:
        execute(
            db,
            "insert into a values (1, 'one'), (2, 'two')",
            "insert into b values (1), (2), (3)",
        )
        await wait_for(lambda: engine.destinations["pg"].delivered_total >= 5, what="5 events")
        assert rows(target, "select * from replica.a_copy order by id") == [
            (1, "one", "x"),
            (2, "two", "x"),
        ]
        execute(db, "truncate b", "insert into b values (9)")
        await wait_for(lambda: engine.destinations["pg"].delivered_total >= 7, what="truncate")
    assert rows(target, "select id from replica.b") == [(9,)]
    assert rows(target, "select count(*) from replica.a_copy") == [(2,)]


def _event(lsn: int, seq: int, op: str, table: str, record: Any, old: Any = None) -> Event:
    env = {
        "id": format_event_id(lsn, seq),
        "op": op,
        "table": table,
        "key": None,
        "record": record,
        "old": old,
        "commit_lsn": format_lsn(lsn),
        "xid": 1,
        "committed_at": "2024-01-01T00:00:00+00:00",
    }
    return Event(
        commit_lsn=lsn,
        seq=seq,
        op=op,  # type: ignore[arg-type]
        table=table,
        keys=(f"{table}\x1f{(record or old)['id']}",),
        body=orjson.dumps(env),
        xid=1,
        committed_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


async def test_replayed_batch_is_applied_once(target: str) -> None:
    execute(target, AUDIT, "create table t (id int primary key, v int)")
    add_audit(target, "t")
    sink = pg_sink(target)
    await sink.open()
    try:
        batch = [_event(100, i, "insert", "public.t", {"id": i, "v": i}) for i in range(5)]
        await sink.deliver(batch)
        await sink.deliver(batch)  # a replay after a crash
        await sink.deliver([*batch[2:], _event(200, 0, "update", "public.t", {"id": 1, "v": 7})])
        assert sink.applied == 6 and sink.replays_skipped == 8
    finally:
        await sink.close()
    assert rows(target, "select count(*) from audit") == [(6,)]
    assert rows(target, "select v from t order by id") == [(0,), (7,), (2,), (3,), (4,)]
    assert rows(target, "select count(*) from walrelay.applied_events") == [(6,)]


async def test_one_batch_applies_in_event_order_across_statement_kinds(target: str) -> None:
    # Runs of the same statement go out as one executemany: the runs must keep
    # the events' order (upserts of key 1 around its delete, a key change).
    execute(target, AUDIT, "create table t (id int primary key, v int)")
    add_audit(target, "t")
    sink = pg_sink(target)
    await sink.open()
    try:
        await sink.deliver(
            [
                _event(100, 0, "insert", "public.t", {"id": 1, "v": 1}),
                _event(100, 1, "insert", "public.t", {"id": 2, "v": 2}),
                _event(100, 2, "delete", "public.t", None, {"id": 1}),
                _event(100, 3, "insert", "public.t", {"id": 1, "v": 3}),
                _event(100, 4, "update", "public.t", {"id": 5, "v": 4}, {"id": 2}),
                _event(100, 5, "update", "public.t", {"id": 1, "v": 6}),
            ]
        )
    finally:
        await sink.close()
    assert rows(target, "select id, v from t order by id") == [(1, 6), (5, 4)]
    ops = rows(target, "select op, row_data->>'id' from audit order by n")
    assert ops == [
        ("INSERT", "1"),
        ("INSERT", "2"),
        ("DELETE", "1"),
        ("INSERT", "1"),
        ("UPDATE", "5"),  # the key change moves row 2 to 5
        ("UPDATE", "1"),
    ]


async def test_bad_event_is_poison_and_earlier_ones_apply(target: str) -> None:
    execute(target, "create table t (id int primary key, v int check (v >= 0))")
    sink = pg_sink(target)
    await sink.open()
    try:
        batch = [
            _event(100, 0, "insert", "public.t", {"id": 1, "v": 1}),
            _event(100, 1, "insert", "public.t", {"id": 2, "v": -1}),  # violates the check
            _event(100, 2, "insert", "public.t", {"id": 3, "v": 3}),
        ]
        with pytest.raises(PoisonEvent, match=r"0000000000000064/0000000001"):
            await sink.deliver(batch)
        assert rows(target, "select id from t") == [(1,)]
        # After the fix the batch is retried whole: 1 is skipped, 2 and 3 apply.
        execute(target, "alter table t drop constraint t_v_check")
        await sink.deliver(batch)
    finally:
        await sink.close()
    assert rows(target, "select id, v from t order by id") == [(1, 1), (2, -1), (3, 3)]


async def test_a_column_named_ordinality_is_upserted(target: str) -> None:
    execute(target, "create table t (id int primary key, ordinality int, v text)")
    execute(target, "insert into t values (1, 0, 'before')")
    sink = pg_sink(target)
    await sink.open()
    try:
        await sink.deliver(
            [
                _event(100, i, "insert", "public.t", {"id": i, "ordinality": 10 + i, "v": "new"})
                for i in range(1, 4)
            ]
        )
    finally:
        await sink.close()
    assert rows(target, "select * from t order by id") == [
        (1, 11, "new"),
        (2, 12, "new"),
        (3, 13, "new"),
    ]


async def test_a_column_named_ordinality_added_later(target: str) -> None:
    execute(target, "create table t (id int primary key, v text)")
    sink = pg_sink(target)
    await sink.open()
    try:
        await sink.deliver([_event(100, i, "insert", "public.t", {"id": i}) for i in range(2)])
        execute(target, "alter table t add column ordinality int")
        # The statement made for the table as it was fails (the column is then
        # ambiguous); the events, tried one by one, are applied by statements
        # made for the table as it is now.
        await sink.deliver(
            [_event(200, i, "insert", "public.t", {"id": i, "v": "x"}) for i in range(2)]
        )
    finally:
        await sink.close()
    assert rows(target, "select id, v from t order by id") == [(0, "x"), (1, "x")]


async def test_missing_target_table_is_retryable(target: str) -> None:
    sink = pg_sink(target)
    await sink.open()
    try:
        event = _event(100, 0, "insert", "public.later", {"id": 1})
        with pytest.raises(SinkError) as info:
            await sink.deliver([event])
        assert not info.value.permanent and "does not exist" in str(info.value)
        execute(target, "create table later (id int primary key)")
        await sink.deliver([event])
    finally:
        await sink.close()
    assert rows(target, "select id from later") == [(1,)]


async def test_parallel_mode_keeps_per_key_order(db: str, target: str, tmp_path: Path) -> None:
    execute(db, "create table c (id int primary key, v int)")
    execute(target, AUDIT, "create table c (id int primary key, v int)")
    add_audit(target, "c")
    config = make_config(
        db,
        ["public.c"],
        [sink_dest(target, ordered=False, max_connections=4, batch_size=50)],
    )
    async with running_engine(config) as engine:
        execute(db, "insert into c select g, 0 from generate_series(1, 200) g")
        for v in range(1, 6):
            execute(db, f"update c set v = {v}")
        await wait_for(
            lambda: engine.destinations["pg"].delivered_total >= 1200, what="1200 events"
        )
    assert rows(target, "select count(*), min(v), max(v) from c") == [(200, 5, 5)]
    audit = rows(
        target, "select (row_data->>'id')::int, (row_data->>'v')::int from audit order by n"
    )
    per_key: dict[int, list[int]] = {}
    for key, v in audit:
        per_key.setdefault(key, []).append(v)
    assert all(vs == [0, 1, 2, 3, 4, 5] for vs in per_key.values())
    assert len(per_key) == 200


async def test_applied_records_are_trimmed(target: str) -> None:
    execute(target, "create table t (id int primary key)")
    sink = pg_sink(target)
    await sink.open()
    try:
        await sink.deliver([_event(100, i, "insert", "public.t", {"id": i}) for i in range(3)])
        await sink.deliver(
            [_event(0x1C8, i, "insert", "public.t", {"id": 5 + i}) for i in range(2)]
        )
        sink.trim_below(0x1C8)  # the records of commit LSN 0x1C8 are kept
        await sink.deliver([_event(0x2000, 0, "insert", "public.t", {"id": 10})])
    finally:
        await sink.close()
    assert rows(target, "select event_id from walrelay.applied_events order by 1") == [
        (format_event_id(0x1C8, 0),),
        (format_event_id(0x1C8, 1),),
        (format_event_id(0x2000, 0),),
    ]


def _earlier_layout(target: str) -> Event:
    """``walrelay.applied_events`` as an earlier version made it (ids in the
    database's collation, an index on commit_lsn), holding the record of the
    event returned; and a table ``t`` to apply to."""
    execute(target, "create table t (id int primary key, v text)")
    execute(target, "create schema walrelay")
    execute(
        target,
        "create table walrelay.applied_events (destination text not null,"
        ' event_id text collate "POSIX" not null, commit_lsn pg_lsn not null,'
        " applied_at timestamptz not null default now(), primary key (destination, event_id))",
    )
    execute(
        target,
        "create index applied_events_destination_lsn on walrelay.applied_events"
        " (destination, commit_lsn)",
    )
    old = _event(100, 0, "insert", "public.t", {"id": 1, "v": "old"})
    execute(
        target,
        "insert into walrelay.applied_events (destination, event_id, commit_lsn)"
        f" values ('d', '{old.id}', '{format_lsn(old.commit_lsn)}')",
    )
    return old


async def _replay_and_trim(sink: PostgresSink, old: Event) -> None:
    """Replay ``old`` beside a new event, trim below LSN 200, apply one more."""
    await sink.open()
    try:
        await sink.deliver([old, _event(200, 0, "insert", "public.t", {"id": 2, "v": "new"})])
        sink.trim_below(200)
        await sink.deliver([_event(300, 0, "insert", "public.t", {"id": 3, "v": "new"})])
    finally:
        await sink.close()
    assert sink.replays_skipped == 1


def _layout(target: str) -> tuple[list[tuple[Any, ...]], ...]:
    """The event_id column's collation, the table's indexes, its records and ``t``."""
    return (
        rows(
            target,
            "select l.collname from pg_attribute a join pg_collation l on l.oid = a.attcollation"
            " where a.attrelid = 'walrelay.applied_events'::regclass and a.attname = 'event_id'",
        ),
        rows(
            target, "select indexname from pg_indexes where tablename = 'applied_events' order by 1"
        ),
        rows(target, "select event_id from walrelay.applied_events order by 1"),
        rows(target, "select id, v from t order by id"),
    )


async def test_applied_events_of_an_earlier_layout_are_migrated(target: str) -> None:
    """Ids compared byte-wise, the index gone, the records kept (a replay of
    them is still skipped) and trimmed by commit LSN."""
    old = _earlier_layout(target)
    await _replay_and_trim(pg_sink(target), old)
    assert _layout(target) == (
        [("C",)],
        [("applied_events_pkey",)],
        [(format_event_id(200, 0),), (format_event_id(300, 0),)],
        [(2, "new"), (3, "new")],
    )


async def test_applied_events_another_role_owns_stay_as_they_are(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the right to alter the table, the sink works with it as it is:
    replays skipped, records trimmed by commit LSN (with its index)."""
    old = _earlier_layout(target)
    dbname = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
    role = f"sink_{dbname}"
    execute(target, f"create role {role} login")
    execute(target, f"grant create on database {dbname} to {role}")
    execute(target, f"grant usage, create on schema walrelay to {role}")
    execute(target, f"grant select, insert, update, delete on walrelay.applied_events, t to {role}")
    dsn = target.replace("user=postgres", f"user={role}")
    assert dsn != target
    with caplog.at_level(logging.WARNING, logger="walrelay.sinks.postgres"):
        await _replay_and_trim(pg_sink(dsn), old)
    assert "cannot alter walrelay.applied_events" in caplog.text
    assert _layout(target) == (
        [("POSIX",)],
        [("applied_events_destination_lsn",), ("applied_events_pkey",)],
        [(format_event_id(200, 0),), (format_event_id(300, 0),)],
        [(2, "new"), (3, "new")],
    )
