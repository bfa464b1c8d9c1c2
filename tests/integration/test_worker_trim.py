"""A worker trims its dedup state against a real Kafka (KRaft) broker and
PostgreSQL: ledger rows (webhook) and applied_events rows (PostgreSQL sink)
below the group's replay floor go; those a partition still behind may
re-read stay, so the replay after a rebalance is still dropped."""

from __future__ import annotations

import asyncio
import base64
import uuid

import psycopg
import pytest
from aiohttp import web
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.integration.support import WebhookReceiver, execute, wait_for
from tests.integration.worker_support import kafka, produce, running_worker, target_db
from walrelay.model import format_event_id
from walrelay.pipeline import ledger as ledger_module
from walrelay.sinks import postgres as postgres_module
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import quick_group
from walrelay.worker import trim as trim_module
from walrelay.worker.config import parse_worker_config
from walrelay.worker.partitioner import partition_for
from walrelay.worker.trim import GroupParked

__all__ = ["kafka", "target_db"]  # the fixtures, used here

pytestmark = pytest.mark.servers

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class HoldingReceiver(WebhookReceiver):
    """A webhook peer that keeps the requests of some keys open until released."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.hold_keys: set[int] = set()
        self.released = asyncio.Event()
        self.held = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["key"]["id"] in self.hold_keys:
            self.held += 1
            await self.released.wait()
        return await super()._handle(request)


def keys_on(partition: int, count: int) -> list[int]:
    return [k for k in range(1, 100) if partition_for(b'{"id":%d}' % k, 2) == partition][:count]


async def ids(dsn: str, query: str, destination: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, (destination,))
        return {str(r[0]) for r in await cur.fetchall()}


async def test_rows_below_the_groups_replay_floor_are_trimmed_and_a_backlogs_rows_kept(
    kafka: KafkaServer,
    db: str,
    target_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_SECRET", SECRET)
    monkeypatch.setattr(trim_module, "READ_INTERVAL", 0.2)
    # Each record carries the trim when the floor moved (not at most once a second):
    # the trim the test waits for cannot be skipped for following an earlier one.
    monkeypatch.setattr(ledger_module, "TRIM_INTERVAL", 0.0)
    monkeypatch.setattr(postgres_module, "TRIM_INTERVAL", 0.0)
    topic = f"trim{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    execute(target_db, "create table t (id int primary key, v int not null)")
    held, behind = keys_on(0, 2)  # partition 0: the held key stops its committed offset
    c, d = keys_on(1, 2)  # partition 1: committed to its end
    # In commit order, as a relay in exactly_once mode writes them.
    rows = [(c, 1, 0x101), (d, 1, 0x102), (held, 1, 0x103), (behind, 1, 0x104), (c, 2, 0x105)]

    def eid(lsn: int) -> str:
        return format_event_id(lsn, 0)

    async with HoldingReceiver(SECRET) as hook:
        hook.hold_keys = {held}
        config = parse_worker_config(
            {
                "worker": {
                    "kafka": quick_group(
                        kafka.bootstrap,
                        f"g-{topic}",
                        [topic],
                        commit_interval=0.1,
                        revoke_timeout=1,
                    ),
                    "dedup_retention": 0,
                },
                "state": {"dsn": db},
                "shutdown_timeout": 1,
                "destinations": [
                    {
                        "name": "hook",
                        "max_in_flight": 8,
                        "sink": {
                            "type": "webhook",
                            "url": hook.url,
                            "secret_env": "WALRELAY_TEST_SECRET",
                            "timeout": 60,
                        },
                    },
                    {"name": "pg", "sink": {"type": "postgres", "dsn": target_db}},
                ],
            },
            "(test)",
        )
        ledger = "select event_id from walrelay.ledger where destination = %s"
        applied = "select event_id from walrelay.applied_events where destination = %s"
        async with running_worker(config, "a") as a:
            produce(kafka.bootstrap, topic, rows)
            everything = {eid(lsn) for _k, _v, lsn in rows}
            await wait_for(
                lambda: set(hook.ids) == everything - {eid(0x103)} and hook.held == 1,
                what="every event but the held one at the webhook",
            )

            async def all_applied() -> bool:
                return await ids(target_db, applied, "pg") == everything

            await wait_for(all_applied, what="every event applied", interval=0.2)
            await wait_for(
                lambda: a.trim is not None and a.trim.floor == 0x103,
                what="the floor at the held record (its partition is behind there)",
            )
            # The trim rides along the next record and batch.
            produce(kafka.bootstrap, topic, [(d, 2, 0x106)])

            async def trimmed() -> bool:
                return eid(0x101) not in await ids(db, ledger, "walrelay/hook") and eid(
                    0x101
                ) not in await ids(target_db, applied, "pg")

            await wait_for(trimmed, what="rows below the floor deleted", interval=0.2)
            kept = {eid(lsn) for lsn in (0x104, 0x105, 0x106)}
            assert await ids(db, ledger, "walrelay/hook") == kept
            assert await ids(target_db, applied, "pg") == kept | {eid(0x103)}
        # Another member's parked event holds the floor: it is read from the state database.
        parked = GroupParked(db, "walrelay", ["hook", "other"])
        try:
            assert await parked.oldest() is None
            execute(
                db,
                "insert into walrelay.parked_events (destination, commit_lsn, seq, event_id,"
                " keys, op, table_name, xid, committed_at, payload, size)"
                " values ('other', 258, 0, '0000000000000102/0', '{k}', 'update', 'public.t',"
                " 1, now(), '{}', 2)",
            )
            assert await parked.oldest() == 0x102
        finally:
            await parked.close()
        # The held key's partition goes back to its committed offset (the held
        # record): a rebalance replay. Mark the target rows a replay would overwrite.
        execute(target_db, f"update t set v = 99 where id in ({held}, {behind})")
        hook.hold_keys = set()
        hook.released.set()
        async with running_worker(config, "b") as b:

            def caught_up() -> bool:
                parts = b.partitions_status()
                return len(parts) == 2 and all(
                    p["committed_offset"] == p["high_watermark"] for p in parts
                )

            await wait_for(caught_up, what="the replay delivered and committed")
            assert eid(0x103) in hook.ids
        # The replayed record past the held one was dropped by both sinks' rows.
        assert hook.ids.count(eid(0x104)) == 1
        with psycopg.connect(target_db) as conn:
            assert conn.execute("select id, v from t order by id").fetchall() == sorted(
                [(c, 2), (d, 2), (held, 99), (behind, 99)]
            )
