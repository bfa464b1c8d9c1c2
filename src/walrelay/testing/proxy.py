"""A TCP proxy for tests that break a link: pass, delay, cut, black-hole.

There is no toxiproxy and no ``tc netem`` where walrelay's tests run, so a
test that needs a bad network puts this proxy between walrelay and a server
(PostgreSQL, a broker, a webhook peer) and points walrelay at :attr:`port`::

    async with TcpProxy(pg_port) as proxy:
        dsn = dsn_with_port(dsn, proxy.port)
        ...
        proxy.cut()        # every open connection is reset now; new ones too
        proxy.restore()    # connections pass again

Modes (one at a time, for every connection, switched at any moment):

``pass``
    bytes go both ways unchanged (the start).
``delay``
    (:meth:`delay`) every chunk is forwarded that many seconds after it was
    read, in order, both ways: latency, not a lower throughput.
``cut``
    (:meth:`cut`) every open connection is reset (TCP RST) at once, and each
    new one is reset as soon as it is accepted: a server that went away.
``blackhole``
    (:meth:`blackhole`) connections are accepted and read, and nothing is
    forwarded nor answered: a peer that hangs, a dropped route. A connection
    that lost bytes this way is reset by :meth:`restore` (its stream would
    be corrupt); one opened while black-holed never reaches the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

from walrelay.testing.pgcluster import free_port

__all__ = ["Mode", "TcpProxy"]

Mode = Literal["pass", "delay", "cut", "blackhole"]

_CHUNK = 65536
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One accepted connection and, unless it was opened black-holed, its upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    lost_bytes: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


class TcpProxy:
    """Forwards a free loopback port to ``target_host:target_port``; the test
    switches the link's behaviour with :meth:`delay`, :meth:`cut`,
    :meth:`blackhole` and :meth:`restore` (module docstring). Start and stop
    it with ``async with`` (or :meth:`start` / :meth:`stop`)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = free_port()
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.accepted = 0  # connections accepted so far, in any mode
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # -- switching ------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Forward every chunk ``seconds`` after it was read (both ways)."""
        if seconds < 0:
            raise ValueError(f"TcpProxy.delay: {seconds} s: the delay must be >= 0")
        self.mode, self.latency = ("delay" if seconds else "pass"), seconds

    def cut(self) -> None:
        """Reset every open connection now, and every new one until :meth:`restore`."""
        self.mode, self.latency = "cut", 0.0
        for link in list(self._links):
            link.reset()

    def blackhole(self) -> None:
        """Read and drop everything, answer nothing, until :meth:`restore`."""
        self.mode, self.latency = "blackhole", 0.0

    def restore(self) -> None:
        """Pass bytes unchanged again; connections that lost bytes are reset."""
        self.mode, self.latency = "pass", 0.0
        for link in list(self._links):
            if link.lost_bytes:
                link.reset()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        tasks = [t for link in self._links for t in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- forwarding -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "cut":
            _reset(writer)
            return
        link = _Link(writer)
        if self.mode == "blackhole":
            link.lost_bytes = True
        else:
            try:
                up_reader, link.upstream = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                _reset(writer)  # the target is down: so is the link
                return
        self._links.add(link)
        pumps = [self._pump(link, reader, link.upstream)]
        if link.upstream is not None:
            pumps.append(self._pump(link, up_reader, writer))
        for pump in pumps:
            task = asyncio.create_task(pump)
            link.tasks.add(task)
            task.add_done_callback(link.tasks.discard)
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for w in (link.client, link.upstream):
            if w is not None:
                w.close()

    async def _pump(
        self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None
    ) -> None:
        """Copy ``src`` to ``dst`` in the current mode until EOF or a reset."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            assert dst is not None
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the configured latency
                dst.write(data)
                await dst.drain()
            dst.close()  # EOF from src: close our side towards dst too

        forwarder = asyncio.create_task(forward()) if dst is not None else None
        try:
            while data := await src.read(_CHUNK):
                if link.lost_bytes or self.mode in ("blackhole", "cut") or dst is None:
                    link.lost_bytes = True
                    continue
                queue.put_nowait((loop.time() + self.latency, data))
            queue.put_nowait((0.0, b""))
            if forwarder is not None:
                await forwarder
        except (OSError, asyncio.IncompleteReadError):
            link.reset()
        finally:
            if forwarder is not None and not forwarder.done():
                forwarder.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await forwarder
