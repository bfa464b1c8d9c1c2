"""The test proxy (walrelay.testing.proxy) against a loopback echo server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from walrelay.testing.proxy import TcpProxy


class Echo:
    """Echoes every byte back; counts what it received."""

    def __init__(self) -> None:
        self.received = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    e.server = await asyncio.start_server(e._handle, "127.0.0.1", 0)
    try:
        yield e
    finally:
        e.server.close()


async def roundtrip(proxy: TcpProxy, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def test_passes_bytes_both_ways(echo: Echo) -> None:
    async with TcpProxy(echo.port) as proxy:
        assert await roundtrip(proxy, b"x" * 200_000) == b"x" * 200_000
        assert proxy.accepted == 1 and echo.received == 200_000


async def test_delay_adds_latency_each_way(echo: Echo) -> None:
    async with TcpProxy(echo.port) as proxy:
        proxy.delay(0.15)
        started = time.monotonic()
        assert await roundtrip(proxy) == b"ping"
        assert time.monotonic() - started >= 0.3  # 0.15 s there, 0.15 s back
        proxy.delay(0)
        assert proxy.mode == "pass"
        with pytest.raises(ValueError, match="must be >= 0"):
            proxy.delay(-1)


async def test_cut_resets_open_and_new_connections_until_restored(echo: Echo) -> None:
    async with TcpProxy(echo.port) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        proxy.cut()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await roundtrip(proxy)
        assert echo.connections == 1  # the new one never reached the target
        proxy.restore()
        assert await roundtrip(proxy) == b"ping"


async def test_blackhole_reads_and_never_answers(echo: Echo) -> None:
    async with TcpProxy(echo.port) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        proxy.blackhole()
        writer.write(b"lost")
        await writer.drain()
        # Deliberate timeout: proving that nothing comes back takes waiting a while.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.3)
        late_reader, late_writer = await asyncio.open_connection(*proxy.address)
        late_writer.write(b"hello")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late_reader.readexactly(1), 0.3)
        assert echo.received == 1 and echo.connections == 1  # nothing forwarded
        proxy.restore()
        # Both lost bytes: reset rather than carry on with a corrupt stream.
        for r in (reader, late_reader):
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(r.readexactly(1), 5)
        for w in (writer, late_writer):
            w.close()
        assert await roundtrip(proxy) == b"ping"
