"""One replication connection's read loop: frames -> transactions -> the Router.

A :class:`ReplicationSession` lives as long as one connection. It decodes
what the walsender sends, hands every change to the
:class:`~walrelay.pipeline.router.Router` (awaiting a full buffer:
backpressure), tells the LSN tracker where transactions begin and end, and
answers keepalives. After a reconnect the engine makes a new session from the
old one's :class:`Resume`: the server sends a transaction it was in the middle
of again from its start, and the changes already routed are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from walrelay import speedups
from walrelay.config import SourceConfig
from walrelay.engine.backfills import BackfillManager
from walrelay.engine.feedback import Feedback
from walrelay.errors import DecodeError, WalrelayError
from walrelay.model import Begin, Change, Commit, Lsn, format_lsn
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.router import Blocked, Router
from walrelay.pipeline.stats import EngineStats
from walrelay.source.backfill import WATERMARK_PREFIX
from walrelay.source.heartbeat import Heartbeat
from walrelay.source.pgoutput import INSERT
from walrelay.source.stream import (
    KEEPALIVE,
    XLOGDATA,
    XLOGDATA_HEADER,
    ReplicationConnectionLost,
    ReplicationSource,
    parse_keepalive,
    xlogdata_start,
)
from walrelay.source.transactions import TransactionAssembler

__all__ = ["ReplicationSession", "Resume"]

log = logging.getLogger("walrelay.engine")


@dataclass(frozen=True)
class Resume:
    """Where the previous connection of the slot left off."""

    last_sealed_end: Lsn = 0
    """End LSN of the newest committed transaction received."""
    commit_lsn: Lsn | None = None
    """The transaction it was in the middle of (None: between transactions)."""
    routed: int = 0
    """How many changes of that transaction were routed already."""


async def _put_all(blocked: Blocked) -> None:
    for dest, event in blocked:
        await dest.put(event)


def _at_lsn(error: DecodeError, frame: bytes) -> DecodeError:
    """The decoder is not told each message's LSN (it costs time per message):
    add it to the error here."""
    error.message = f"{error.message} (message at WAL {format_lsn(xlogdata_start(frame))})"
    return error


class ReplicationSession:
    """Reads one replication connection until it drops or the engine stops."""

    def __init__(
        self,
        stream: ReplicationSource,
        *,
        source: SourceConfig,
        router: Router,
        tracker: LsnTracker,
        feedback: Feedback,
        stats: EngineStats,
        backfills: BackfillManager,
        heartbeat: Heartbeat | None,
        heartbeat_prefix: str,
        heartbeat_table: str | None,
        stop: asyncio.Event,
        on_keepalive: Callable[[], None],
        resume: Resume,
    ) -> None:
        self.stream = stream
        self._source = source
        self._router = router
        self._tracker = tracker
        self._feedback = feedback
        self._stats = stats
        self._backfills = backfills
        self._bf_watch = backfills.watch  # the manager updates this set in place
        self._heartbeat = heartbeat
        self._heartbeat_prefix = heartbeat_prefix
        self._heartbeat_table = heartbeat_table
        self._stop = stop
        self._on_keepalive_hook = on_keepalive
        # The transaction being received: Begin seen, Commit not yet.
        self._begin: Begin | None = None
        self._seq = 0
        self._skip_tx = False
        self._resume_commit_lsn = resume.commit_lsn
        self._resume_seq = resume.routed
        self.last_sealed_end = resume.last_sealed_end
        # True once the connection was closed because delivery stayed blocked.
        self.released = False

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def resume(self) -> Resume:
        """What the next connection's session must know about this one."""
        begin = self._begin
        if begin is not None and not self._skip_tx:
            # Dropped inside a transaction: it comes again whole. (One being
            # skipped as already received is skipped again by its Begin.)
            return Resume(self.last_sealed_end, begin.commit_lsn, self._seq)
        if self._resume_commit_lsn is not None:
            # Dropped again before that transaction came back.
            return Resume(self.last_sealed_end, self._resume_commit_lsn, self._resume_seq)
        return Resume(self.last_sealed_end)

    async def run(self) -> None:
        """Read until the engine stops between transactions (return) or the
        connection drops (:class:`~walrelay.source.stream.ReplicationConnectionLost`)."""
        src = self._source
        assembler = TransactionAssembler(
            spill_dir=src.spill_dir, memory_limit_bytes=src.spill_memory_bytes
        )
        self._router.discard_counts()
        feed = assembler.feed
        route = self._route
        # Runs of inserts go from their messages to the buffers in one step
        # where they can (Router.route_inserts); the rest is decoded, then routed.
        # Without the C encoder no run is ever built: every Insert is fed at once
        # (-1 matches no message kind).
        run_kind = INSERT if speedups.encode_insert_events is not None else -1
        insert_start = assembler.insert_start
        route_inserts = self._router.route_inserts
        bf_watch = self._bf_watch  # backfill windows: their changes take _route
        tx_metadata = self._router.has_transaction_metadata
        stream = self.stream
        stop = self._stop
        try:
            while True:
                if stop.is_set() and self._begin is None:
                    return
                self._flush_adds()  # the scheduler may finish events while we wait
                frames = await stream.read_frames()
                i, n = 0, len(frames)
                while i < n:
                    frame = frames[i]
                    i += 1
                    kind = frame[0]
                    if kind == XLOGDATA:
                        if len(frame) > XLOGDATA_HEADER and frame[XLOGDATA_HEADER] == run_kind:
                            started = insert_start(frame, XLOGDATA_HEADER)
                            if started is not None:
                                if started[0] is not None:
                                    self._on_begin(started[0])
                                begin = self._begin
                                if (
                                    begin is not None
                                    and not self._skip_tx
                                    and self._resume_commit_lsn is None
                                    and not bf_watch
                                ):
                                    routed, blocked = route_inserts(
                                        begin, started[1], frames, i - 1, self._seq
                                    )
                                    if routed:
                                        self._seq += routed
                                        i += routed - 1
                                        if blocked is not None:
                                            self._flush_adds()
                                            await self._wait_for_room(blocked)
                                        continue
                        try:
                            items = feed(frame, 0, offset=XLOGDATA_HEADER)
                        except DecodeError as e:
                            raise _at_lsn(e, frame) from None
                        for item in items:
                            cls = type(item)
                            if cls is Change:
                                blocked = route(item)  # type: ignore[arg-type]
                                if blocked is not None:
                                    # A full buffer: wait for space (backpressure).
                                    self._flush_adds()
                                    await self._wait_for_room(blocked)
                            elif cls is Begin:
                                self._on_begin(item)  # type: ignore[arg-type]
                            else:
                                if tx_metadata and self._begin is not None:
                                    # begin/end events, counted before the seal
                                    # (walrelay.pipeline.transaction_metadata).
                                    blocked = self._router.end_transaction(
                                        self._begin.commit_lsn, self._seq
                                    )
                                    if blocked is not None:
                                        self._flush_adds()
                                        for dest, event in blocked:
                                            await dest.put(event)
                                self._on_commit(item)  # type: ignore[arg-type]
                    elif kind == KEEPALIVE:
                        self._on_keepalive(frame)
        finally:
            assembler.close()

    async def _wait_for_room(self, blocked: Blocked) -> None:
        """Hand over the events that did not fit, waiting for buffer space.

        While we wait we do not read the socket, so the walsender soon blocks
        writing to us, and a blocked walsender holds the primary: the server
        cannot terminate it to invalidate the slot at
        ``max_slot_wal_keep_size``, a checkpoint waits for it, a fast shutdown
        hangs. So when delivery stays blocked for
        ``source.disconnect_when_blocked_after`` seconds the replication
        connection is closed; once there is room again the session ends with
        :class:`ReplicationConnectionLost` and the engine reconnects from the
        safe LSN (the changes already routed are skipped, see :class:`Resume`).
        """
        # Awaited in place (no task per wait: under steady backpressure this
        # runs for nearly every change); cancelling a put leaves nothing behind.
        handed = 0
        try:
            async with asyncio.timeout(self._source.disconnect_when_blocked_after):
                for dest, event in blocked:
                    await dest.put(event)
                    handed += 1
            return
        except TimeoutError:
            pass
        names = ", ".join(sorted({dest.name for dest, _ in blocked}))
        log.warning(
            "delivery to %s blocked for %.0fs: closing the replication connection so "
            "the server is never held by it; reconnecting when there is room",
            names,
            self._source.disconnect_when_blocked_after,
        )
        self.released = True
        self._stats.backpressure_releases += 1
        await self.stream.close()
        await _put_all(blocked[handed:])
        raise ReplicationConnectionLost(
            "closed while delivery was blocked (backpressure); there is room again"
        )

    def _on_keepalive(self, frame: bytes) -> None:
        wal_end, reply = parse_keepalive(frame)
        if self._source.confirm_idle:
            self._tracker.keepalive(wal_end)
        self._on_keepalive_hook()
        if reply:
            self._feedback.send_status(self.stream)

    def _flush_adds(self) -> None:
        """Tell the tracker about events routed since the last flush (the
        router counts in bulk; see walrelay.pipeline.router)."""
        begin = self._begin
        if begin is not None:
            self._router.flush_counts(begin.commit_lsn)

    def _on_begin(self, begin: Begin) -> None:
        self._begin = begin
        self._seq = 0
        self._skip_tx = False
        commit_lsn = begin.commit_lsn
        if self._resume_commit_lsn is not None:
            if commit_lsn == self._resume_commit_lsn:
                return  # already begun in the tracker before the reconnect
            self._resume_commit_lsn = None
        tracker = self._tracker
        last = tracker.last_begun
        if last is not None and commit_lsn <= last:
            # Sent again after a reconnect although we asked to start past it.
            log.debug("skipping transaction %s: already received", format_lsn(commit_lsn))
            self._skip_tx = True
            return
        tracker.begin(commit_lsn)
        self._stats.transactions_in += 1

    def _on_commit(self, commit: Commit) -> None:
        if self._skip_tx:
            self._skip_tx = False
            self._begin = None
            return
        self._flush_adds()
        end_lsn = commit.end_lsn
        self._tracker.seal(commit.commit_lsn, end_lsn)
        if end_lsn > self.last_sealed_end:
            self.last_sealed_end = end_lsn
        self._stats.last_commit_lsn = commit.commit_lsn
        self._begin = None
        self._resume_commit_lsn = None

    def _route(self, change: Change) -> Blocked | None:
        """Hand a streamed change to the router (see walrelay.pipeline.router).

        Returns the (destination, event) pairs that did not fit in their
        buffer, which the caller awaits; None when all fitted.
        """
        begin = self._begin
        if begin is None:
            raise WalrelayError("received a change outside a transaction (decoder bug)")
        seq = self._seq
        self._seq = seq + 1
        if self._skip_tx or (self._resume_commit_lsn is not None and seq < self._resume_seq):
            return None  # routed before the connection dropped
        router = self._router
        if change.relation is None and change.op != "truncate":
            if change.prefix == WATERMARK_PREFIX:
                # A backfill watermark: never delivered; a high one brings the chunk.
                pairs = self._backfills.on_watermark(change, begin, seq)
                if not pairs:
                    return None
                self._seq += len(pairs)
                return router.dispatch_shaped(pairs)
            if change.prefix == self._heartbeat_prefix:
                if self._heartbeat is not None:
                    self._heartbeat.observe(change)
                return None  # a heartbeat message: never delivered
        dests = router.routes_of(change)
        if not dests:
            if self._heartbeat is not None and self._heartbeat_table is not None:
                self._heartbeat.observe(change)  # a heartbeat table row (routed nowhere)
            return None
        event = router.build(begin, change, seq)
        if self._bf_watch and (change.op == "truncate" or event.table in self._bf_watch):
            self._backfills.observe(change, event, dests)
        blocked = router.dispatch(event, dests)
        if router.extra_seqs:  # a transform fanned out: its events used the next ids
            self._seq += router.take_extra_seqs()
        return blocked
