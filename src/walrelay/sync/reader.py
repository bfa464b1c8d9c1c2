"""One node's reader: its slot's transactions handed, whole, to its directions.

Transactions carrying one of this sync's replication origins were applied
by walrelay itself and are dropped (no echo): on PostgreSQL 15 pgoutput
sends an Origin message after Begin for them (the decoder puts it on
:class:`~walrelay.model.Begin`); from 16 on the slot is read with
``origin = none`` and the server does not send them at all.

The slot is confirmed up to the lowest position every outgoing direction
has passed (:attr:`Direction.applied_end`), so a direction whose target is
down holds the slot, and the other directions go on. When a direction
(re)connects behind the reader, the reader starts again from the slot
(:meth:`request_rewind`); the directions skip what they applied already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from walrelay.model import Begin, Change, Commit, Lsn
from walrelay.source.stream import (
    KEEPALIVE,
    XLOGDATA,
    XLOGDATA_HEADER,
    PsycopgReplicationStream,
    ReplicationConnectionLost,
    parse_keepalive,
)
from walrelay.source.transactions import TransactionAssembler
from walrelay.sync.applier import Direction
from walrelay.sync.config import SyncSettings
from walrelay.sync.transactions import Marker, SourceTx

__all__ = ["NodeReader", "replication_options"]

log = logging.getLogger("walrelay.sync")

STATUS_INTERVAL = 1.0  # seconds between standby status updates


def replication_options(publication: str, server_version: int) -> dict[str, str]:
    """pgoutput's options for a node's slot. ``messages``: the transactional
    messages of the ``walrelay_sync_previous`` trigger travel with their changes.
    ``origin = none`` (PostgreSQL 16+) has the server drop every transaction
    that carries a replication origin; before 16 the option does not exist
    and the reader drops ours by the Origin message."""
    options = {"proto_version": "1", "publication_names": publication, "messages": "true"}
    if server_version >= 160000:
        options["origin"] = "none"
    return options


class NodeReader:
    """Reads one node's slot for the directions leaving that node."""

    def __init__(
        self, settings: SyncSettings, node: str, directions: list[Direction], server_version: int
    ) -> None:
        self.settings = settings
        self.node = node
        self.directions = directions
        self.server_version = server_version
        self._epoch = 0
        self._rewind = False
        self._stream: PsycopgReplicationStream | None = None
        self.transactions = 0
        self.echoes_dropped = 0
        self.connected = False
        self.wal_end: Lsn = 0
        """The node's WAL position as last heard (a commit's end, a keepalive)."""

    @property
    def epoch(self) -> int:
        """How many times streaming started (a direction waits for a newer one)."""
        return self._epoch

    def request_rewind(self) -> None:
        self._rewind = True
        if self._stream is not None:
            self._stream.wake()

    def confirmable(self) -> Lsn:
        return min(d.applied_end for d in self.directions)

    async def run(self, stop: asyncio.Event) -> None:
        # Wait until each direction knows its position (or failed once), so that
        # the first stream serves them all.
        await asyncio.gather(*(d.ever_tried.wait() for d in self.directions))
        backoff = self.settings.reconnect
        delay = backoff.initial
        while not stop.is_set():
            try:
                await self._stream_once(stop)
                delay = backoff.initial
                continue  # a rewind, or stopping
            except ReplicationConnectionLost as e:
                log.warning(
                    "sync node %s: replication stream: %s; retrying in %.1fs",
                    self.node,
                    str(e).splitlines()[0] if str(e) else "lost",
                    delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * backoff.multiplier, backoff.max)

    async def _stream_once(self, stop: asyncio.Event) -> None:
        s = self.settings
        stream = PsycopgReplicationStream(
            s.nodes[self.node].dsn_value, application_name=f"walrelay-sync-{s.name}-{self.node}"
        )
        options = replication_options(s.publication, self.server_version)
        self._epoch += 1
        self._rewind = False
        epoch = self._epoch
        self._stream = stream
        status = asyncio.create_task(self._send_status(stream))
        wake_on_stop = asyncio.create_task(self._wake_on_stop(stream, stop))
        try:
            await stream.start(s.slot(self.node), 0, options)
            self.connected = True
            await self._read(stream, epoch, stop)
        finally:
            self.connected = False
            status.cancel()
            wake_on_stop.cancel()
            stream.send_status(self.confirmable())
            self._stream = None
            await stream.close()

    async def _wake_on_stop(self, stream: PsycopgReplicationStream, stop: asyncio.Event) -> None:
        await stop.wait()
        stream.wake()

    async def _send_status(self, stream: PsycopgReplicationStream) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            stream.send_status(self.confirmable())

    async def _read(
        self, stream: PsycopgReplicationStream, epoch: int, stop: asyncio.Event
    ) -> None:
        assembler = TransactionAssembler()
        origins = self.settings.origins
        begin: Begin | None = None
        changes: list[Change] = []
        last_end: Lsn = 0
        try:
            while True:
                if self._rewind or (stop.is_set() and begin is None):
                    return
                for frame in await stream.read_frames():
                    kind = frame[0]
                    if kind == XLOGDATA:
                        for item in assembler.feed(frame, 0, offset=XLOGDATA_HEADER):
                            if isinstance(item, Change):
                                changes.append(item)
                            elif isinstance(item, Begin):
                                begin = item
                                changes = []
                            elif isinstance(item, Commit):
                                assert begin is not None
                                last_end = item.end_lsn
                                self.wal_end = max(self.wal_end, item.end_lsn)
                                if begin.origin is not None and begin.origin in origins:
                                    self.echoes_dropped += 1
                                    self._mark(Marker(item.end_lsn, item.committed_at))
                                elif not any(c.relation is not None for c in changes):
                                    # Only logical messages (heartbeats): nothing to apply.
                                    self._mark(Marker(item.end_lsn, item.committed_at))
                                else:
                                    self.transactions += 1
                                    tx = SourceTx(
                                        self.node,
                                        item.commit_lsn,
                                        item.end_lsn,
                                        item.committed_at,
                                        tuple(changes),
                                    )
                                    await self._dispatch(tx, epoch)
                                begin = None
                                changes = []
                    elif kind == KEEPALIVE:
                        wal_end, reply = parse_keepalive(frame)
                        self.wal_end = max(self.wal_end, wal_end)
                        if begin is None and wal_end > last_end:
                            last_end = wal_end
                            self._mark(Marker(wal_end, datetime.now(UTC)))
                        if reply:
                            stream.send_status(self.confirmable())
        finally:
            assembler.close()

    def _live(self, d: Direction, epoch: int) -> bool:
        return d.attached and epoch >= d.need_epoch

    async def _dispatch(self, tx: SourceTx, epoch: int) -> None:
        for d in self.directions:
            if self._live(d, epoch):
                await d.queue.put((epoch, tx))

    def _mark(self, marker: Marker) -> None:
        epoch = self._epoch
        for d in self.directions:
            if self._live(d, epoch) and not d.queue.full():
                d.queue.put_nowait((epoch, marker))
