"""`walrelay worker` on Debezium topics, against a real Kafka (KRaft) and PostgreSQL.

The records are what real Debezium 3.6.1 wrote (JsonConverter with schemas,
tests/data/debezium/golden-schemas.jsonl) for the golden workload
(tests/data/debezium/{setup,snapshot,stream}.sql). Fed to Kafka as Debezium
would (one topic per table, keyed by the key struct), a worker with a
PostgreSQL sink must make the target equal the source the workload leaves,
skip tombstones, and drop records Debezium sends twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.integration.support import (
    WebhookReceiver,
    execute,
    make_config,
    running_engine,
    wait_for,
)
from walrelay.testing.pgcluster import PgCluster, scratch_database
from walrelay.testing.servers import KafkaServer
from walrelay.worker.config import parse_worker_config
from walrelay.worker.runner import Worker

pytestmark = pytest.mark.servers

DATA = Path(__file__).resolve().parent.parent / "data" / "debezium"
TABLES = {"types": "id", "plain": "id", "full_row": "id", "toasted": "id", "two_keys": "a, b"}
# What Debezium does not carry back exactly (README "Debezium topics"): bit(1) is
# a boolean, varbit is padded to its length, timetz loses its offset; box, lseg,
# polygon and circle are not sent at all. The target has no such columns.
LOSSY = ("c_bit1", "c_varbit", "c_timetz", "c_box", "c_lseg", "c_polygon", "c_circle")


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer() as server:
        yield server


@pytest.fixture
def databases(pg: PgCluster) -> Iterator[tuple[str, str]]:
    """(source, target): the source ran the whole workload; the target has its tables."""
    with (
        scratch_database(pg, f"dbz_src_{uuid.uuid4().hex[:6]}") as source,
        scratch_database(pg, f"dbz_tgt_{uuid.uuid4().hex[:6]}") as target,
    ):
        setup = (DATA / "setup.sql").read_text().replace("CREATE PUBLICATION", "-- ")
        snapshot, stream = (DATA / "snapshot.sql").read_text(), (DATA / "stream.sql").read_text()
        execute(source, setup, snapshot, stream)
        execute(target, setup, *(f"alter table types drop column {c}" for c in LOSSY))
        yield source, target


def rows(dsn: str, table: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"select * from {table} order by {TABLES[table]}")
        names = [d.name for d in cur.description or ()]
        out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return [{k: v for k, v in r.items() if columns is None or k in columns} for r in out]


def columns(dsn: str, table: str) -> list[str]:
    return list(rows(dsn, table)[0]) if rows(dsn, table) else []


def produce(bootstrap: str, records: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """As Debezium does: one topic per table, keyed by the key struct (Java's
    partitioner). Returns each partition's end offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    ends: dict[tuple[str, int], int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    for r in records:
        value = r["value"]
        if isinstance(value, dict):
            value = json.dumps(value).encode()
        key = None if r["key"] is None else json.dumps(r["key"]).encode()
        producer.produce(r["destination"], value=value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    return ends


async def test_debezium_topics_reach_a_postgres_target_exactly(
    kafka: KafkaServer,
    db: str,
    databases: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, target = databases
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    prefix = f"dbz{uuid.uuid4().hex[:6]}"
    records = [
        json.loads(line) for line in (DATA / "golden-schemas.jsonl").read_text().splitlines()
    ]
    for r in records:
        r["destination"] = r["destination"].replace("golden.", prefix + ".", 1)
    topics = sorted({r["destination"] for r in records})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    # plain has one partition: its TRUNCATE (no key) orders only against the
    # records of its own partition (README "Debezium topics").
    new = [NewTopic(t, num_partitions=1 if t.endswith(".plain") else 3) for t in topics]
    for future in admin.create_topics(new).values():
        future.result(30)
    # And something that is no Debezium event: skipped, one line naming where it is.
    stray = {"destination": f"{prefix}.public.plain", "key": None, "value": b"not json"}
    produce(kafka.bootstrap, [*records, stray])
    expected = sum(1 for r in records if r["value"] is not None)

    async with WebhookReceiver(secret) as hook:
        config = parse_worker_config(
            {
                "worker": {
                    "kafka": {
                        "bootstrap": kafka.bootstrap,
                        "group": f"g-{prefix}",
                        "topics": topics,
                        "format": "debezium",
                        "commit_interval": 0.1,
                    }
                },
                "state": {"dsn": db},
                "shutdown_timeout": 5,
                "destinations": [
                    {"name": "target", "sink": {"type": "postgres", "dsn": target}},
                    {
                        "name": "hook",
                        "retry": {"initial": 0.05, "max": 0.1},
                        "sink": {
                            "type": "webhook",
                            "url": hook.url,
                            "secret_env": "WALRELAY_TEST_SECRET",
                        },
                    },
                ],
            },
            "(test)",
        )
        worker = Worker(config, name="dbz")
        task = asyncio.create_task(worker.run())

        def state() -> str:
            """What a failed wait reports: where delivery stands."""
            dests = {
                d.name: (d.delivered_total, d.parked_total, d.failures_total, d.last_error)
                for d in worker.destinations.by_name.values()
            }
            return (
                f"hook got {len(hook.ids)} of {expected}; tombstones {worker.tombstones};"
                f" skipped {worker.not_envelopes}; destinations {dests};"
                f" partitions {worker.partitions_status()}"
            )

        async def waiting(predicate: Callable[[], bool | Awaitable[bool]], what: str) -> None:
            try:
                await wait_for(predicate, within=60, what=what)
            except AssertionError as e:
                raise AssertionError(f"{e}: {state()}") from None

        try:

            def same_rows() -> bool:
                return all(
                    rows(target, t) == rows(source, t, columns(target, t) or None) for t in TABLES
                )

            async def target_equals_source() -> bool:
                # In a thread: a query waiting for the sink's TRUNCATE lock must not
                # block the event loop the sink needs to commit.
                return await asyncio.to_thread(same_rows)

            await waiting(lambda: len(hook.ids) >= expected, "every event delivered")
            await waiting(target_equals_source, "the target to equal the source")
            assert worker.tombstones == sum(1 for r in records if r["value"] is None) == 5
            await waiting(lambda: worker.not_envelopes == 1, "the stray record skipped")
            assert any(
                f"{prefix}.public.plain[0] offset" in m
                and "skipped: not a debezium event: the value is not JSON" in m
                and "set worker.kafka.format" in m
                for m in caplog.messages
            )
            assert len(set(hook.ids)) == len(hook.ids) == expected
            # Debezium sends the streamed changes again (a connector restarted from
            # older offsets): same source positions, same ids: the ledger drops them.
            again = [r for r in records if r["value"] and r["value"]["payload"]["op"] != "r"]
            ends = produce(kafka.bootstrap, again)

            def replay_committed() -> bool:
                committed = {
                    (p["topic"], p["partition"]): p["committed_offset"] or 0
                    for p in worker.partitions_status()
                }
                return all(committed.get(tp, 0) >= end for tp, end in ends.items())

            await waiting(replay_committed, "the replayed records consumed and committed")
            assert len(hook.ids) == expected
            assert await target_equals_source()
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, timeout=30)


ROUND_TRIP_TABLE = """
create table acct (
  id int primary key, amount numeric(12, 2), ratio numeric, at timestamptz, day date,
  blob bytea, doc jsonb, tags text[], name text, flag boolean, n bigint, f float8,
  t timestamp, tm time, u uuid, big text
);
alter table acct alter column big set storage external;
"""


def acct(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select * from acct order by id").fetchall()


async def test_walrelay_debezium_output_round_trips_through_a_worker(
    kafka: KafkaServer, db: str, pg: PgCluster
) -> None:
    """relay (format: debezium, schemas.enable) -> Kafka -> worker (format:
    debezium) -> PostgreSQL: the target equals the source."""
    with scratch_database(pg, f"dbz_rt_{uuid.uuid4().hex[:6]}") as target:
        execute(db, ROUND_TRIP_TABLE)
        execute(target, ROUND_TRIP_TABLE)
        prefix = f"rt{uuid.uuid4().hex[:6]}"
        relay = make_config(
            db,
            ["public.acct"],
            [
                {
                    "name": "log",
                    "format": "debezium",
                    "debezium": {"topic.prefix": prefix, "schemas.enable": True},
                    "sink": {
                        "type": "kafka",
                        "bootstrap_servers": kafka.bootstrap,
                        "prefix": prefix,
                        "key_format": "debezium",
                        "tombstones": True,
                        # One partition: walrelay's key-changing UPDATE is one event on
                        # the new key's partition, which can overtake the old key's
                        # earlier events on another (README "Debezium topics").
                        "partitions": 1,
                    },
                }
            ],
            slot=f"{prefix}_slot",
        )
        worker_config = parse_worker_config(
            {
                "worker": {
                    "kafka": {
                        "bootstrap": kafka.bootstrap,
                        "group": f"g-{prefix}",
                        "topics": [f"{prefix}.public.acct"],
                        "format": "debezium",
                        "commit_interval": 0.1,
                    },
                    "slot": f"{prefix}_slot",
                },
                "state": {"dsn": db},
                "shutdown_timeout": 5,
                "destinations": [{"name": "target", "sink": {"type": "postgres", "dsn": target}}],
            },
            "(test)",
        )
        async with running_engine(relay):
            execute(
                db,
                "insert into acct select i, i * 1.25, 1.0 / 3 + i, '2024-01-02 03:04:05.123456+02',"
                " '2024-02-29', '\\x00ff'::bytea || i::text::bytea,"
                ' \'{"big": 12345678901234567890123, "x": [1.50, null]}\'::jsonb,'
                " array['a b', null, 'c\"d'], 'n' || i, i % 2 = 0, 9223372036854775807 - i,"
                " 0.1 + i, '1999-12-31 23:59:59.5', '13:14:15.25', gen_random_uuid(),"
                " repeat(md5(i::text), 300) from generate_series(1, 40) i",
                "update acct set amount = -amount, name = null where id % 3 = 0",
                # A key change that leaves the TOASTed big out: the sink moves the row.
                "update acct set id = id + 100 where id in (5, 6)",
                "delete from acct where id in (7, 8)",
                "update acct set doc = '[]', tags = '{}' where id = 9",
            )
            worker = Worker(worker_config, name="rt")
            task = asyncio.create_task(worker.run())
            try:

                def same_rows() -> bool:
                    return acct(target) == acct(db) and len(acct(db)) == 38

                await wait_for(
                    lambda: asyncio.to_thread(same_rows), what="the target to equal the source"
                )
                assert worker.not_envelopes == 0
                assert worker.tombstones == 4  # 2 deletes, 2 old keys
            finally:
                worker.request_stop()
                await asyncio.wait_for(task, timeout=30)
        # TOAST: the updates did not resend big; the target kept it.
        assert all(row[-1] for row in acct(target))
