"""The engine: source -> decoder -> router -> per-destination pipelines -> LSN.

One asyncio task reads the replication stream and routes events into the
destinations' bounded buffers (awaiting when one is full: backpressure);
each destination's scheduler delivers; a feedback task reports the safe
LSN to the server on a timer, also while reading is paused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import psycopg

from walrelay import failpoints, speedups
from walrelay.config import Config, DestinationConfig
from walrelay.engine.backfills import BackfillManager
from walrelay.engine.snapshot import mark_done_when_confirmed, run_initial_snapshot
from walrelay.errors import DecodeError, SlotLost, SourceSetupError, WalrelayError
from walrelay.model import Begin, Change, Commit, Event, Lsn, format_lsn
from walrelay.monitor.service import Services
from walrelay.monitor.thresholds import Severity
from walrelay.outbox.partitions import upkeep_loop
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.ledger import TrimAware, wrap_sink
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.retry import DestinationRetry, RetryStore
from walrelay.pipeline.router import Blocked, Router
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.stats import EngineStats
from walrelay.sinks.base import Sink
from walrelay.sinks.registry import build_sink
from walrelay.source.backfill import WATERMARK_PREFIX
from walrelay.source.heartbeat import Heartbeat
from walrelay.source.slot import SourceInfo, prepare_source, slot_busy_from_error
from walrelay.source.snapshot import Progress, drop_slot, record_snapshot, snapshot_status
from walrelay.source.stream import (
    KEEPALIVE,
    XLOGDATA,
    XLOGDATA_HEADER,
    PsycopgReplicationStream,
    ReplicationConnectionLost,
    ReplicationSource,
    parse_keepalive,
    xlogdata_start,
)
from walrelay.source.transactions import TransactionAssembler
from walrelay.source.types import TypeRegistry

log = logging.getLogger("walrelay.engine")

SourceFactory = Callable[[str], ReplicationSource]
SinkFactory = Callable[[DestinationConfig], Sink]


def _at_lsn(error: DecodeError, frame: bytes) -> DecodeError:
    """The decoder is not told each message's LSN (it costs time per message):
    add it to the error here."""
    error.message = f"{error.message} (message at WAL {format_lsn(xlogdata_start(frame))})"
    return error


class Engine:
    """Runs one slot to its destinations until :meth:`request_stop`."""

    def __init__(
        self,
        config: Config,
        *,
        source_factory: SourceFactory | None = None,
        sink_factory: SinkFactory | None = None,
        until_lsn: Lsn | None = None,
    ) -> None:
        self.config = config
        self.until_lsn = until_lsn
        self._source_factory: SourceFactory = source_factory or (
            lambda dsn: PsycopgReplicationStream(dsn)
        )
        self._sink_factory: SinkFactory = sink_factory or (
            lambda d: build_sink(
                d.sink,
                slot=config.source.slot,
                destination=d.name,
                tables=d.tables or config.source.tables,
            )
        )
        self.tracker = LsnTracker()
        self.stats = EngineStats()
        self.destinations: dict[str, Destination] = {}
        # The one entrance of every event (walrelay.pipeline.router), made
        # once the destinations are open.
        self.router: Router | None = None
        self._stop = asyncio.Event()
        self._stream: ReplicationSource | None = None
        self._builder: EnvelopeBuilder | None = None
        self.source_info: SourceInfo | None = None
        self.started = asyncio.Event()
        # Monitor loop, alerts, metrics and the HTTP server (walrelay.monitor.service).
        self.services = Services(self)
        # The transaction being received: Begin seen, Commit not yet.
        self._begin: Begin | None = None
        self._seq = 0
        # After a reconnect in the middle of a transaction, the server sends it
        # again from its start: skip the changes already routed.
        self._resume_commit_lsn: Lsn | None = None
        self._resume_seq = 0
        self._skip_tx = False
        self._last_sealed_end: Lsn = 0
        self._last_status_sent: Lsn = -1
        # Confirmed LSNs sent, with when: the ledgers trim only below what the
        # server has had for a while (see _server_confirmed).
        self._status_sent: collections.deque[tuple[float, Lsn]] = collections.deque()
        self._server_floor: Lsn = 0
        self._session_task: asyncio.Task[None] | None = None
        self._force_stop: asyncio.TimerHandle | None = None
        # Failed deliveries parked in the state database (None: no destination parks).
        self.retry_store: RetryStore | None = None
        # Heartbeats (walrelay.source.heartbeat): never delivered, whether ours or not.
        hb = config.heartbeat
        self._heartbeat_prefix = hb.prefix
        self._heartbeat_table = hb.table
        self.heartbeat: Heartbeat | None = None
        if hb.enabled:
            self.heartbeat = Heartbeat(
                hb,
                dsn=config.source.dsn_value,
                slot=config.source.slot,
                publication=config.source.publication,
                create_publication=config.source.create_publication,
                on_lag=self._on_heartbeat_lag,
            )
        self._background: list[asyncio.Task[None]] = []
        # Initial snapshots and backfills (walrelay.engine.snapshot / backfills).
        self.progress: dict[str, Progress] = {}
        self.backfills = BackfillManager(self)
        self._bf_watch = self.backfills.watch
        self._resnapshot = False

    # ---------------------------------------------------------------- control

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: finishing the current transaction and in-flight deliveries")
            self._stop.set()
            if self._stream is not None:
                self._stream.wake()
            # Reading finishes the transaction it is in; if a full buffer keeps it
            # from getting there, give up on that transaction after the timeout
            # (it is not confirmed, so it comes again after restart).
            self._force_stop = asyncio.get_running_loop().call_later(
                self.config.shutdown_timeout, self._cancel_session
            )

    def _cancel_session(self) -> None:
        task = self._session_task
        if task is not None and not task.done():
            log.warning("shutdown_timeout reached while reading a transaction; abandoning it")
            task.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    @property
    def confirmed_lsn(self) -> Lsn:
        return self.tracker.confirmed

    @property
    def replication_paused(self) -> bool:
        """True while a destination's parked events are at their cap: the engine
        does not read the stream (status updates go on). A page-level condition."""
        store = self.retry_store
        return store is not None and store.paused

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        """Run until stopped; with ``on_slot_lost: resnapshot`` a lost slot is
        recreated and the tables snapshotted again (walrelay.source.snapshot)."""
        while True:
            try:
                await self._run_once()
                return
            except SlotLost as e:
                src = self.config.source
                log.critical("PAGE: %s", e)
                self.services.set_condition("slot_lost", src.slot, Severity.PAGE, str(e), e.fix)
                if src.on_slot_lost != "resnapshot" or self.stopping:
                    raise
                log.critical(
                    "on_slot_lost: resnapshot: recreating slot %s and snapshotting %s again",
                    src.slot,
                    ", ".join(src.tables),
                )
                await self._reset_for_new_slot()

    async def _reset_for_new_slot(self) -> None:
        src = self.config.source
        async with await psycopg.AsyncConnection.connect(src.dsn_value, autocommit=True) as conn:
            await drop_slot(conn, src.slot)
        self.tracker = LsnTracker()
        self.destinations = {}
        self.router = None
        self.stats.router = None
        self._stream = None
        self._builder = None
        self.source_info = None
        self._begin = None
        self._seq = 0
        self._resume_commit_lsn = None
        self._resume_seq = 0
        self._skip_tx = False
        self._last_sealed_end = 0
        self._last_status_sent = -1
        self._session_task = None
        self.retry_store = None
        self.backfills = BackfillManager(self)
        self._bf_watch = self.backfills.watch
        self._resnapshot = True
        self.services = Services(self)

    def _wants_snapshot(self) -> bool:
        return any(d.snapshot == "initial" for d in self.config.destinations)

    async def _run_once(self) -> None:
        src = self.config.source
        try:
            admin = await psycopg.AsyncConnection.connect(
                src.dsn_value, autocommit=True, application_name="walrelay-admin"
            )
        except psycopg.OperationalError as e:
            raise SourceSetupError(
                f"cannot connect to the source ({src.masked_dsn}): {str(e).strip()}",
                fix="check source.dsn, the server, and PGPASSWORD / the passfile",
            ) from None
        async with admin:
            state = self.config.state
            if await snapshot_status(admin, state.schema, src.slot) == "running":
                # The last initial snapshot was not delivered: its rows would be lost.
                log.warning(
                    "the initial snapshot of slot %s did not finish: dropping the slot "
                    "to take a new snapshot",
                    src.slot,
                )
                await drop_slot(admin, src.slot)
            self.source_info = await prepare_source(
                src, admin, export_snapshot=self._wants_snapshot()
            )
            if self.heartbeat is not None:
                await self.heartbeat.prepare(admin)
        exported = self.source_info.exported
        start = self.source_info.confirmed_flush_lsn or 0
        if exported is not None:
            # The snapshot is the transaction consistent_point - 1 (see snapshot.py).
            start = exported.consistent_point - 1
            try:
                await record_snapshot(
                    self.config.state_dsn,
                    state.schema,
                    src.slot,
                    exported.consistent_point,
                    "running",
                )
            except BaseException:
                await exported.close()
                raise
        self.tracker = LsnTracker(start=start)
        self._builder = EnvelopeBuilder(TypeRegistry(), key_columns=self.source_info.key_columns)
        try:
            await self._open_destinations()
        except BaseException:
            if exported is not None:
                await exported.close()
            raise
        try:
            await self.services.start()
            self._start_background()
            self.started.set()
            if exported is not None:
                await run_initial_snapshot(self, exported, reset_tables=self._resnapshot)
                self._background.append(
                    asyncio.create_task(
                        mark_done_when_confirmed(self, exported.consistent_point),
                        name="walrelay-snapshot-done",
                    )
                )
            self._background.append(
                asyncio.create_task(self.backfills.run(), name="walrelay-backfills")
            )
            await self._replicate()
        finally:
            await self._stop_background()
            await self._shutdown()
            await self.services.stop()

    def _start_background(self) -> None:
        """Heartbeats and outbox partition upkeep: side tasks that never stop streaming."""
        if self.heartbeat is not None:
            self._background.append(
                asyncio.create_task(self.heartbeat.run(), name="walrelay-heartbeat")
            )
        ob = self.config.outbox
        if ob is not None and ob.maintain:
            self._background.append(
                asyncio.create_task(
                    upkeep_loop(
                        self.config.source.dsn_value,
                        ob.table,
                        slot=self.config.source.slot,
                        interval=ob.interval,
                        days_ahead=ob.days_ahead,
                        retention_days=ob.retention_days,
                        lock_timeout=ob.lock_timeout,
                        confirm_wait=ob.confirm_wait,
                    ),
                    name="walrelay-outbox-upkeep",
                )
            )

    async def _stop_background(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()

    def _on_heartbeat_lag(self, lag: float) -> None:
        self.stats.heartbeat_lag = lag

    async def _open_destinations(self) -> None:
        opened: list[Sink] = []
        try:
            for dcfg in self.config.destinations:
                # Non-transactional sinks go behind the dedup ledger.
                sink = wrap_sink(self._sink_factory(dcfg), self.config, dcfg)
                await sink.open()
                opened.append(sink)
                dest = Destination(
                    dcfg.name,
                    sink,
                    max_in_flight=dcfg.effective_max_in_flight(),
                    max_buffer_bytes=dcfg.buffer_bytes,
                    backoff=Backoff(
                        initial=dcfg.retry.initial,
                        multiplier=dcfg.retry.multiplier,
                        maximum=dcfg.retry.max,
                    ),
                    on_finished=self._finished_callback(dcfg.name),
                    parking=self._parking_for(dcfg, sink),
                )
                self.destinations[dcfg.name] = dest
            if self.retry_store is not None:
                await self.retry_store.open()
                await self.retry_store.load()
                self.retry_store.start()
        except BaseException:
            if self.retry_store is not None:
                await self.retry_store.close()
            for sink in opened:
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        assert self._builder is not None
        self.router = Router(
            self.config.destinations,
            self.destinations,
            self._builder,
            self.tracker,
            ignore_table=self._heartbeat_table,
        )
        self.stats.router = self.router
        for dest in self.destinations.values():
            dest.start()

    def _parking_for(self, dcfg: DestinationConfig, sink: Sink) -> DestinationRetry | None:
        """The destination's failed-event store, unless it is off or the sink is
        ordered (a parked event would be overtaken: those retry in memory)."""
        if not dcfg.failed.enabled:
            return None
        if sink.ordered:
            log.info(
                "destination %s: its sink delivers in exact id order, so failed deliveries"
                " are retried in memory instead of being parked",
                dcfg.name,
            )
            return None
        if self.retry_store is None:
            self.retry_store = RetryStore(self.config.state_dsn, self.config.state.schema)
        return self.retry_store.add_destination(
            dcfg.name, dcfg.failed, max_in_flight=dcfg.effective_max_in_flight()
        )

    def _finished_callback(self, name: str) -> Callable[[Sequence[Event]], None]:
        tracker = self.tracker  # replaced only before destinations exist
        stats = self.stats
        services = self.services

        def on_finished(batch: Sequence[Event]) -> None:
            tracker.finish_events(batch, name)
            services.on_finished(name, batch)
            failpoints.hit(failpoints.PIPELINE_AFTER_FINISH)
            if self.until_lsn is not None and tracker.confirmed >= self.until_lsn:
                self.request_stop()
            if batch:
                stats.last_delivery_lag = max(
                    0.0, (datetime.now(UTC) - batch[-1].committed_at).total_seconds()
                )

        return on_finished

    def _start_options(self) -> dict[str, str]:
        src = self.config.source
        opts = {
            "proto_version": "2" if src.streaming else "1",
            "publication_names": src.publication,
            "messages": "true",
        }
        if src.streaming:
            opts["streaming"] = "true"
        return opts

    def _resume_lsn(self) -> Lsn:
        return max(self.tracker.confirmed, self._last_sealed_end)

    async def _replicate(self) -> None:
        src = self.config.source
        backoff = Backoff(
            initial=src.reconnect.initial,
            multiplier=src.reconnect.multiplier,
            maximum=src.reconnect.max,
        )
        attempt = 0
        while not self.stopping:
            stream = self._source_factory(src.dsn_value)
            start_lsn = self._resume_lsn()
            try:
                await stream.start(src.slot, start_lsn, self._start_options())
            except ReplicationConnectionLost as e:
                self._raise_if_fatal(str(e))
                attempt += 1
                delay = backoff.delay(attempt)
                log.warning(
                    "cannot start replication on slot %s (%s); retrying in %.1fs",
                    src.slot,
                    e,
                    delay,
                )
                await self._sleep_unless_stopped(delay)
                continue
            self._stream = stream
            if attempt:
                self.stats.reconnects += 1
                log.info("replication resumed on slot %s from %s", src.slot, format_lsn(start_lsn))
            else:
                log.info("streaming slot %s from %s", src.slot, format_lsn(start_lsn))
                if not speedups.ENABLED:
                    log.warning(
                        "the C speedups are off (walrelay._speedups was not built for lack of "
                        "a C compiler, or WALRELAY_NO_SPEEDUPS is set): decoding and encoding "
                        "run in pure Python, at a lower throughput; reinstall with gcc and the "
                        "Python headers present"
                    )
            attempt = 0
            feedback = asyncio.create_task(self._feedback_loop(stream), name="walrelay-feedback")
            self._session_task = asyncio.create_task(self._session(stream), name="walrelay-read")
            try:
                await asyncio.wait({self._session_task})
                if not self._session_task.cancelled():
                    self._session_task.result()
            except ReplicationConnectionLost as e:
                self._raise_if_fatal(str(e))
                attempt += 1
                delay = backoff.delay(attempt)
                log.warning("replication connection lost (%s); reconnecting in %.1fs", e, delay)
                await self._sleep_unless_stopped(delay)
            finally:
                # Drain before the feedback task stops: status updates must keep
                # flowing while in-flight deliveries finish.
                if self._stop.is_set():
                    await self._drain_and_confirm(stream)
                feedback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feedback
                session = self._session_task
                if session is not None and not session.done():
                    # We were cancelled: do not leave the reader on a closing socket.
                    session.cancel()
                    with contextlib.suppress(BaseException):
                        await session
                self._stream = None
                await stream.close()

    def _raise_if_fatal(self, message: str) -> None:
        slot = self.config.source.slot
        busy = slot_busy_from_error(slot, message)
        if busy is not None:
            raise busy
        if "does not exist" in message and "slot" in message:
            raise SlotLost(
                f"replication slot {slot} no longer exists",
                fix="start walrelay again to create a new slot (changes made meanwhile "
                "were not captured: backfill the tables)",
            )
        if "can no longer get changes" in message or "invalidated" in message:
            raise SlotLost(
                f"replication slot {slot} was invalidated: the WAL it needed is gone",
                fix=f"SELECT pg_drop_replication_slot('{slot}'); then start again and "
                "backfill the tables",
            )

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def _session(self, stream: ReplicationSource) -> None:
        src = self.config.source
        assembler = TransactionAssembler(
            spill_dir=src.spill_dir, memory_limit_bytes=src.spill_memory_bytes
        )
        if self._begin is not None:
            # The connection dropped inside a transaction: it comes again whole.
            self._resume_commit_lsn = self._begin.commit_lsn
            self._resume_seq = self._seq
            self._begin = None
        router = self.router
        assert router is not None
        router.discard_counts()
        feed = assembler.feed
        route = self._route
        try:
            while True:
                if self._stop.is_set() and self._begin is None:
                    return
                self._flush_adds()  # the scheduler may finish events while we wait
                frames = await stream.read_frames()
                for frame in frames:
                    kind = frame[0]
                    if kind == XLOGDATA:
                        try:
                            items = feed(frame, 0, offset=XLOGDATA_HEADER)
                        except DecodeError as e:
                            raise _at_lsn(e, frame) from None
                        for item in items:
                            cls = type(item)
                            if cls is Change:
                                blocked = route(item)  # type: ignore[arg-type]
                                if blocked is not None:
                                    # A full buffer: wait for space (backpressure;
                                    # status updates keep going meanwhile).
                                    self._flush_adds()
                                    for dest, event in blocked:
                                        await dest.put(event)
                            elif cls is Begin:
                                self._on_begin(item)  # type: ignore[arg-type]
                            else:
                                self._on_commit(item)  # type: ignore[arg-type]
                    elif kind == KEEPALIVE:
                        self._on_keepalive(stream, frame)
        finally:
            assembler.close()

    def _on_keepalive(self, stream: ReplicationSource, frame: bytes) -> None:
        wal_end, reply = parse_keepalive(frame)
        tracker = self.tracker
        if self.config.source.confirm_idle:
            tracker.keepalive(wal_end)
        if self.until_lsn is not None and tracker.confirmed >= self.until_lsn:
            self.request_stop()
        if reply:
            self._send_status(stream)

    def _flush_adds(self) -> None:
        """Tell the tracker about events routed since the last flush (the
        router counts in bulk; see walrelay.pipeline.router)."""
        begin = self._begin
        if begin is not None and self.router is not None:
            self.router.flush_counts(begin.commit_lsn)

    def _on_begin(self, begin: Begin) -> None:
        self._begin = begin
        self._seq = 0
        self._skip_tx = False
        commit_lsn = begin.commit_lsn
        if self._resume_commit_lsn is not None:
            if commit_lsn == self._resume_commit_lsn:
                return  # already begun in the tracker before the reconnect
            self._resume_commit_lsn = None
        tracker = self.tracker
        last = tracker.last_begun
        if last is not None and commit_lsn <= last:
            # Sent again after a reconnect although we asked to start past it.
            log.debug("skipping transaction %s: already received", format_lsn(commit_lsn))
            self._skip_tx = True
            return
        tracker.begin(commit_lsn)
        self.stats.transactions_in += 1

    def _on_commit(self, commit: Commit) -> None:
        if self._skip_tx:
            self._skip_tx = False
            self._begin = None
            return
        self._flush_adds()
        end_lsn = commit.end_lsn
        self.tracker.seal(commit.commit_lsn, end_lsn)
        if end_lsn > self._last_sealed_end:
            self._last_sealed_end = end_lsn
        self.stats.last_commit_lsn = commit.commit_lsn
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
        router = self.router
        assert router is not None
        if change.relation is None and change.op != "truncate":
            if change.prefix == WATERMARK_PREFIX:
                # A backfill watermark: never delivered; a high one brings the chunk.
                pairs = self.backfills.on_watermark(change, begin, seq)
                if not pairs:
                    return None
                self._seq += len(pairs)
                return router.dispatch_shaped(pairs)
            if change.prefix == self._heartbeat_prefix:
                if self.heartbeat is not None:
                    self.heartbeat.observe(change)
                return None  # a heartbeat message: never delivered
        dests = router.routes_of(change)
        if not dests:
            if self.heartbeat is not None and self._heartbeat_table is not None:
                self.heartbeat.observe(change)  # a heartbeat table row (routed nowhere)
            return None
        event = router.build(begin, change, seq)
        if self._bf_watch and (change.op == "truncate" or event.table in self._bf_watch):
            self.backfills.observe(change, event, dests)
        return router.dispatch(event, dests)

    # ---------------------------------------------------------------- LSN feedback

    def _send_status(self, stream: ReplicationSource) -> None:
        confirmed = self.tracker.confirmed
        stream.send_status(confirmed)
        if confirmed != self._last_status_sent:
            self._status_sent.append((time.monotonic(), confirmed))
            failpoints.hit(failpoints.LSN_AFTER_CONFIRM)
        self._last_status_sent = confirmed

    def _server_confirmed(self) -> Lsn:
        """The newest confirmed LSN sent to the server at least a second ago.

        Only the server's position decides what is replayed after a crash, and
        the tracker's value may not have reached it yet: trimming the ledgers
        below the tracker's value could forget ids that are then replayed.
        """
        cutoff = time.monotonic() - 1.0
        sent = self._status_sent
        floor = self._server_floor
        while sent and sent[0][0] <= cutoff:
            floor = max(floor, sent.popleft()[1])
        self._server_floor = floor
        return floor

    def _trim_floor(self) -> Lsn:
        """Below this commit LSN no event is ever delivered again: the ledgers
        forget those ids. (A failed-event store re-delivering parked events
        must lower it to its oldest parked commit LSN.)"""
        floor = self._server_confirmed()
        if self.retry_store is not None:
            for parked in self.retry_store.destinations.values():
                oldest = parked.oldest_commit_lsn()
                if oldest is not None and oldest < floor:
                    floor = oldest
        return floor

    def _trim_ledgers(self) -> None:
        floor = self._trim_floor()
        for dest in self.destinations.values():
            if isinstance(dest.sink, TrimAware):
                dest.sink.trim_below(floor)

    async def _feedback_loop(self, stream: ReplicationSource) -> None:
        interval = self.config.source.status_interval
        tick = min(1.0, interval) if interval > 0 else 1.0
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(tick)  # a timer, not synchronisation
            self._trim_ledgers()
            now = time.monotonic()
            if self.tracker.confirmed != self._last_status_sent or now - last_time >= interval:
                self._send_status(stream)
                last_time = now

    # ---------------------------------------------------------------- shutdown

    async def _drain_and_confirm(self, stream: ReplicationSource) -> None:
        timeout = self.config.shutdown_timeout
        deadline = time.monotonic() + timeout
        for dest in self.destinations.values():
            left = max(0.0, deadline - time.monotonic())
            if not await dest.drain(left):
                log.warning(
                    "destination %s: %d event(s) not delivered within shutdown_timeout "
                    "(%.0fs); they will be delivered after restart",
                    dest.name,
                    dest.buffered_events + dest.in_flight,
                    timeout,
                )
        self._send_status(stream)
        log.info(
            "confirmed %s to slot %s", format_lsn(self.tracker.confirmed), self.config.source.slot
        )

    async def _shutdown(self) -> None:
        if self._force_stop is not None:
            self._force_stop.cancel()
        for dest in self.destinations.values():
            with contextlib.suppress(Exception):
                await dest.stop()
        if self.retry_store is not None:  # its retry loops use the sinks
            try:
                await self.retry_store.close()
            except Exception as e:
                log.warning("failed-events store: error while closing: %s", e)
        for dest in self.destinations.values():
            try:
                await dest.sink.close()
            except Exception as e:  # closing must not hide the reason we stopped
                log.warning("destination %s: error while closing sink: %s", dest.name, e)
