from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType

import pytest

from walrelay.testing.pgcluster import PgCluster, scratch_database, start_cluster
from walrelay.testing.proxy import TcpProxy

StartProxy = Callable[[int], Awaitable[TcpProxy]]

_db_counter = itertools.count(1)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `timeout`, `kill`) would end pytest without any
    # fixture's teardown, leaving the servers it started running; as an
    # interrupt, pytest stops and tears every fixture down (each stops its
    # servers by pid).
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One cluster for the session; every test gets its own database (``db``)."""
    cluster = start_cluster({"logical_decoding_work_mem": "64kB", "wal_sender_timeout": "20s"})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db(pg: PgCluster) -> Iterator[str]:
    """A fresh database; its slots and the database are dropped afterwards."""
    with scratch_database(pg, f"t{next(_db_counter)}") as dsn:
        yield dsn


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[StartProxy]:
    """``proxy = await tcp_proxy(target_port)``: a :class:`TcpProxy` on a free
    loopback port in front of the target, to cut, delay or black-hole the
    link; every proxy the test started is stopped afterwards."""
    started: list[TcpProxy] = []

    async def start(target_port: int) -> TcpProxy:
        proxy = await TcpProxy(target_port).start()
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            await proxy.stop()
