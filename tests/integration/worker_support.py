"""Fixtures of the worker tests: a broker whose groups notice a dead member
quickly, and a target database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from walrelay.testing.pgcluster import PgCluster, scratch_database
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import QUICK_BROKER

__all__ = ["kafka", "target_db"]


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    with KafkaServer(config=QUICK_BROKER) as server:
        yield server


@pytest.fixture
def target_db(pg: PgCluster) -> Iterator[str]:
    with scratch_database(pg, f"tgt_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn
