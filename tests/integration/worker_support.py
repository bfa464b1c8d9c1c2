"""What the worker tests share: a broker whose groups notice a dead member
quickly, a target database, relay-shaped records and a worker running in
this process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.waiting import wait_for
from walrelay.testing.pgcluster import PgCluster, scratch_database
from walrelay.testing.relay_records import relay_update
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import QUICK_BROKER
from walrelay.worker.runner import Worker

__all__ = ["kafka", "produce", "running_worker", "target_db"]


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer(config=QUICK_BROKER) as server:
        yield server


@pytest.fixture
def target_db(pg: PgCluster) -> Iterator[str]:
    with scratch_database(pg, f"tgt_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


def produce(bootstrap: str, topic: str, rows: list[tuple[int, int, int]]) -> None:
    """Relay-shaped records of ``(key, version, commit lsn)``, partitioned like the relay."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for key, version, lsn in rows:
        value, record_key, headers = relay_update("public.t", key, {"id": key, "v": version}, lsn)
        producer.produce(topic, value=value, key=record_key, headers=headers)
    assert producer.flush(30) == 0


@contextlib.asynccontextmanager
async def running_worker(config: Any, name: str) -> AsyncIterator[Worker]:
    """A worker running in this process until the block ends (then stopped)."""
    worker = Worker(config, name=name)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.started.is_set() or task.done(), what=f"{name} to start")
        assert not task.done(), task.exception()
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=30)
