"""``route`` and ``key`` against a real Kafka broker: each event lands on the topic
the template names and on the partition a Java client would choose for its key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from tests.integration.broker_workloads import retry_fast, unique_prefix
from tests.integration.support import execute, make_config, running_engine
from tests.integration.test_sink_kafka import Reader
from walrelay.model import parse_event_id
from walrelay.testing.servers import KafkaServer
from walrelay.worker.partitioner import partition_for

pytestmark = pytest.mark.servers

PARTITIONS = 5


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer() as server:
        yield server


async def test_route_and_key_pick_the_java_clients_topic_and_partition(
    kafka: KafkaServer, db: str
) -> None:
    execute(
        db,
        "create table orders (id int primary key, customer_id int not null, region text)",
    )
    prefix = unique_prefix("xf")
    dest = {
        "name": "orders-by-customer",
        "retry": retry_fast(),
        "snapshot": "never",
        "sink": {
            "type": "kafka",
            "mode": "at_least_once",
            "bootstrap_servers": kafka.bootstrap,
            "checkpoint_topic": f"{prefix}.checkpoints",
            "partitions": PARTITIONS,
            "delivery_timeout": 5,
        },
        "transforms": [
            {"key": {"columns": ["customer_id"]}},
            {"route": {"to": prefix + ".{record.region}"}},
        ],
    }
    config = make_config(db, ["public.orders"], [dest])
    reader = Reader(kafka.bootstrap, prefix)
    try:
        async with running_engine(config):
            execute(
                db,
                "insert into orders select g, g % 23, case when g % 3 = 0 then 'eu' else 'us' end"
                " from generate_series(1, 120) g",
                "update orders set region = region where id <= 10",
            )
            await reader.until(130)
        await asyncio.to_thread(reader.read, 0.5, 3.0)
    finally:
        reader.close()
    assert len(reader.seen) == 130
    partitions_used = set()
    for (topic, partition), seen in reader.by_partition.items():
        for s in seen:
            record = s.envelope["record"]
            assert topic == f"{prefix}.{record['region']}"
            key = orjson.dumps({"customer_id": record["customer_id"]})
            assert s.envelope["key"] == {"customer_id": record["customer_id"]}
            assert partition == partition_for(key, PARTITIONS), (topic, record)
            partitions_used.add(partition)
        # Each key's (customer's) events keep commit order inside its partition.
        by_key: dict[int, list[tuple[int, int]]] = {}
        for s in seen:
            by_key.setdefault(s.envelope["record"]["customer_id"], []).append(
                parse_event_id(s.envelope["id"])
            )
        assert all(ids == sorted(ids) for ids in by_key.values())
    assert len(partitions_used) == PARTITIONS
