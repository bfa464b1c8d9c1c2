"""The engine: the lifecycle of one slot's run, from setup to shutdown.

What happens to a change is spread over the engine package by job:
:mod:`~walrelay.engine.session` reads one replication connection and hands
changes to the Router; :mod:`~walrelay.engine.delivery` opens the
destinations with their delivery hooks; :mod:`~walrelay.engine.feedback`
tells the server the safe LSN; :mod:`~walrelay.engine.snapshot` and
:mod:`~walrelay.engine.backfills` feed existing rows to the same Router.
This module starts and stops them: it prepares the slot, keeps reconnecting
(a new session per connection), and on a lost slot with ``on_slot_lost:
resnapshot`` starts over with a new :class:`SlotRun`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import psycopg

from walrelay import speedups
from walrelay.config import Config
from walrelay.dsn import scrub
from walrelay.engine.backfills import BackfillManager
from walrelay.engine.delivery import CompletionHook, Destinations, SinkFactory, open_destinations
from walrelay.engine.feedback import Feedback
from walrelay.engine.session import ReplicationSession, Resume
from walrelay.engine.snapshot import mark_done_when_confirmed, run_initial_snapshot
from walrelay.engine.standby import HaLock, HaLockLost, end_stale_walsender
from walrelay.engine.watch import SourceWatch, publication_lost, slot_dropped, slot_invalidated
from walrelay.errors import PublicationLost, SlotLost, SourceSetupError, WalrelayError
from walrelay.model import Lsn, format_lsn
from walrelay.monitor.service import Services
from walrelay.monitor.thresholds import Severity
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.parking import ParkingStore
from walrelay.pipeline.router import Router
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.stats import EngineStats
from walrelay.pipeline.transforms import ResumeHook, build_chains
from walrelay.sinks.registry import build_sink
from walrelay.source.heartbeat import Heartbeat
from walrelay.source.slot import (
    SourceInfo,
    find_renamed,
    prepare_source,
    slot_busy_from_error,
    slot_usable,
)
from walrelay.source.snapshot import Progress, drop_slot
from walrelay.source.stream import (
    PsycopgReplicationStream,
    ReplicationConnectionLost,
    ReplicationSource,
)
from walrelay.source.types import TypeRegistry
from walrelay.state.snapshots import record_snapshot, resume_as_backfills, snapshot_status
from walrelay.state.tables import read_table_oids, record_table_oids

log = logging.getLogger("walrelay.engine")

SourceFactory = Callable[[str], ReplicationSource]
__all__ = ["Engine", "SinkFactory", "SlotRun", "SourceFactory"]


class SlotRun:
    """Everything that lives as long as one slot: the LSN tracker, the
    destinations and their parking, the Router, the feedback to the server,
    backfills and the monitoring services. A re-snapshot after a lost slot
    makes a new one; a reconnect keeps it (and makes a new session)."""

    def __init__(self, engine: Engine) -> None:
        self._status_interval = engine.config.source.status_interval
        self.tracker = LsnTracker()
        self.source_info: SourceInfo | None = None
        self.destinations = Destinations()
        self.router: Router | None = None
        self.feedback = self._feedback()
        self.backfills = BackfillManager(engine)
        self.services = Services(engine)
        # Where the last connection left off (see walrelay.engine.session).
        self.resume = Resume()

    def start_at(self, lsn: Lsn, *, slot_confirmed: Lsn = 0) -> None:
        """The slot's position is known: the tracker starts there (and the
        status updates never go below ``slot_confirmed``)."""
        self.tracker = LsnTracker(start=lsn)
        self.feedback = self._feedback()
        self.feedback.slot_floor = slot_confirmed

    def _feedback(self) -> Feedback:
        return Feedback(
            self.tracker,
            status_interval=self._status_interval,
            trim_targets=lambda: self.destinations.trim_targets(),
            oldest_parked=lambda: self.destinations.oldest_parked(),
        )

    def resume_lsn(self) -> Lsn:
        """Where the next connection starts streaming."""
        return max(self.tracker.confirmed, self.resume.last_sealed_end)


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
        self.stats = EngineStats()
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._force_stop: asyncio.TimerHandle | None = None
        self._session: ReplicationSession | None = None
        self._session_task: asyncio.Task[None] | None = None
        # Heartbeats (walrelay.source.heartbeat): never delivered, whether ours or not.
        hb = config.heartbeat
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
        # Initial snapshots and backfills report here (walrelay.engine.snapshot / backfills).
        self.progress: dict[str, Progress] = {}
        self._resnapshot = False
        # Set by the source watch (walrelay.engine.watch): the slot or the
        # publication is gone; the read loop stops and raises it.
        self._fatal: WalrelayError | None = None
        self._fatal_set = asyncio.Event()
        self.slot = SlotRun(self)

    # ---------------------------------------------------------------- views

    @property
    def tracker(self) -> LsnTracker:
        return self.slot.tracker

    @property
    def destinations(self) -> dict[str, Destination]:
        return self.slot.destinations.by_name

    @property
    def router(self) -> Router | None:
        return self.slot.router

    @property
    def source_info(self) -> SourceInfo | None:
        return self.slot.source_info

    @property
    def backfills(self) -> BackfillManager:
        return self.slot.backfills

    @property
    def services(self) -> Services:
        return self.slot.services

    @property
    def parking(self) -> ParkingStore | None:
        """Failed deliveries parked in the state database (None: no destination parks)."""
        return self.slot.destinations.parking

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def streaming(self) -> bool:
        return self._session is not None

    @property
    def confirmed_lsn(self) -> Lsn:
        return self.tracker.confirmed

    @property
    def backpressured(self) -> bool:
        """True while the replication connection is closed because delivery
        stayed blocked (walrelay.engine.session); it reconnects when there is room."""
        session = self._session
        return session is not None and session.released

    @property
    def replication_paused(self) -> bool:
        """True while a destination's parked events are at their cap: the engine
        does not read the stream (status updates go on). A page-level condition."""
        store = self.parking
        return store is not None and store.paused

    # ---------------------------------------------------------------- control

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: finishing the current transaction and in-flight deliveries")
            self._stop.set()
            if self._session is not None:
                self._session.stream.wake()
            # Reading finishes the transaction it is in; if a full buffer keeps it
            # from getting there, give up on that transaction after the timeout
            # (it is not confirmed, so it comes again after restart).
            self._force_stop = asyncio.get_running_loop().call_later(
                self.config.shutdown_timeout, self._cancel_session
            )

    def fail(self, error: WalrelayError) -> None:
        """Stop reading now and raise ``error`` from :meth:`run` (the slot or
        the publication is gone: what is buffered cannot be confirmed anyway)."""
        if self._fatal is not None:
            return
        self._fatal = error
        self._fatal_set.set()
        task = self._session_task
        if task is not None and not task.done():
            task.cancel()  # also out of a wait for buffer space

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _cancel_session(self) -> None:
        task = self._session_task
        if task is not None and not task.done():
            log.warning("shutdown_timeout reached while reading a transaction; abandoning it")
            task.cancel()

    def _stop_when_confirmed(self) -> None:
        if self.until_lsn is not None and self.tracker.confirmed >= self.until_lsn:
            self.request_stop()

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        """Run until stopped, holding the slot's HA lock (walrelay.engine.standby):
        ``ha: standby`` waits for it first; a lock lost (its link cut) stops
        streaming until it is taken again."""
        cfg = self.config
        lock = HaLock(
            cfg.state_dsn,
            schema=cfg.state.schema,
            slot=cfg.source.slot,
            where="the source" if cfg.state.dsn is None else "the state database",
        )
        standby = cfg.ha == "standby"
        try:
            while True:
                if standby:
                    waited_since = time.monotonic()
                    if not await lock.wait(self._stop):
                        return
                    log.warning(
                        "took over slot %s's HA lock after %.1fs of standby: starting",
                        cfg.source.slot,
                        time.monotonic() - waited_since,
                    )
                else:
                    await lock.acquire_or_fail(cfg.source.dsn_value)
                holder = asyncio.create_task(lock.hold(self.fail), name="walrelay-ha-lock")
                try:
                    await self._run_slots()
                    return
                except HaLockLost as e:
                    log.error("%s", e.message)
                    self._fatal = None
                    self._fatal_set.clear()
                    self.slot = SlotRun(self)
                    standby = True
                finally:
                    holder.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await holder
                    await lock.release()
        finally:
            await lock.release()

    async def _run_slots(self) -> None:
        """Run slot after slot: with ``on_slot_lost: resnapshot`` a lost slot
        is recreated and the tables snapshotted again (walrelay.source.snapshot)."""
        while True:
            try:
                await self._run_slot()
                return
            except PublicationLost as e:
                log.critical("PAGE: %s; walrelay stops (exit 3) -- fix: %s", e.message, e.fix)
                raise
            except SlotLost as e:
                src = self.config.source
                if src.on_slot_lost != "resnapshot" or self.stopping:
                    log.critical(
                        "PAGE: %s; on_slot_lost: stop: walrelay stops (exit 3) -- fix: %s",
                        e.message,
                        e.fix,
                    )
                    raise
                log.critical("PAGE: %s", e.message)
                log.critical(
                    "on_slot_lost: resnapshot: recreating slot %s and snapshotting %s again",
                    src.slot,
                    ", ".join(src.tables),
                )
                async with await psycopg.AsyncConnection.connect(
                    src.dsn_value, autocommit=True
                ) as conn:
                    await drop_slot(conn, src.slot)
                self._resnapshot = True
                self._fatal = None
                self._fatal_set.clear()
                self.slot = SlotRun(self)

    async def _take_slot(self, admin: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """With the HA lock held, a walsender still streaming the slot serves a
        walrelay that lost the lock (dead, or cut off): end it."""
        for _ in range(50):
            pid = await end_stale_walsender(admin, self.config.source.slot)
            if pid is None:
                return
            log.warning(
                "slot %s was still streamed by walsender PID %d for a walrelay that lost "
                "the HA lock: ended it",
                self.config.source.slot,
                pid,
            )
            await asyncio.sleep(0.1)  # the walsender exits asynchronously

    async def _end_stale_walsender(self) -> bool:
        """The slot is busy at a reconnect: if a walsender of ours (whose client
        is gone but the server has not noticed yet) holds it, end it."""
        src = self.config.source
        try:
            async with await psycopg.AsyncConnection.connect(
                src.dsn_value, autocommit=True, application_name="walrelay-admin"
            ) as admin:
                pid = await end_stale_walsender(admin, src.slot)
        except psycopg.Error:
            return True  # cannot tell: retry as for any outage
        if pid is not None:
            log.warning(
                "slot %s was still streamed by walsender PID %d of a lost connection: ended it",
                src.slot,
                pid,
            )
        return pid is not None

    async def _resume_snapshot(self) -> None:
        """The last initial snapshot did not finish, and its slot is there:
        finish it as backfills on that slot (chunks between watermarks, merged
        with the stream) rather than drop the slot and its history."""
        cfg = self.config
        src = cfg.source
        pairs = [
            (d.name, table)
            for d in cfg.destinations
            if d.snapshot == "initial" and (d.ops is None or "insert" in d.ops)
            for table in (d.tables or src.tables)
        ]
        ids = await resume_as_backfills(cfg.state_dsn, cfg.state.schema, src.slot, pairs)
        log.warning(
            "the initial snapshot of slot %s did not finish: resuming it on the same slot as "
            "backfill(s) %s of %s (rows read before the interruption are read again; the slot "
            "keeps its position, so no change is lost)",
            src.slot,
            ", ".join(map(str, ids)),
            ", ".join(sorted({t for _, t in pairs})),
        )

    def _wants_snapshot(self) -> bool:
        return any(d.snapshot == "initial" for d in self.config.destinations)

    async def _run_slot(self) -> None:
        src = self.config.source
        slot = self.slot
        try:
            admin = await psycopg.AsyncConnection.connect(
                src.dsn_value, autocommit=True, application_name="walrelay-admin"
            )
        except psycopg.Error as e:
            raise SourceSetupError(
                f"cannot connect to the source ({src.masked_dsn}): {scrub(str(e), src.dsn_value)}",
                fix="check source.dsn, the server, and PGPASSWORD / the passfile",
            ) from None
        async with admin:
            state = self.config.state
            await self._take_slot(admin)
            if await snapshot_status(admin, state.schema, src.slot) == "running" and (
                await slot_usable(admin, src.slot)
            ):
                await self._resume_snapshot()
            recorded = await read_table_oids(self.config.state_dsn, state.schema, src.slot)
            renamed = await find_renamed(admin, list(src.tables), recorded)
            info = await prepare_source(
                src, admin, export_snapshot=self._wants_snapshot(), renamed=renamed
            )
            slot.source_info = info
            if self.heartbeat is not None:
                await self.heartbeat.prepare(admin)
        exported = info.exported
        try:
            await record_table_oids(
                self.config.state_dsn,
                state.schema,
                src.slot,
                {name: t.oid for name, t in info.tables.items()},
            )
        except BaseException:
            if exported is not None:
                await exported.close()
            raise
        start = info.confirmed_flush_lsn or 0
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
        slot.start_at(start, slot_confirmed=info.confirmed_flush_lsn or 0)
        try:
            await self._open_destinations(slot, info)
        except BaseException:
            if exported is not None:
                await exported.close()
            raise
        try:
            await slot.services.start()
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
                asyncio.create_task(slot.backfills.run(), name="walrelay-backfills")
            )
            self._background.append(
                asyncio.create_task(self._source_watch(slot).run(), name="walrelay-watch")
            )
            try:
                await self._replicate(slot)
            except (SlotLost, PublicationLost) as e:
                # Notified now: the services stop with this slot's run.
                rule = "slot_lost" if isinstance(e, SlotLost) else "publication_lost"
                obj = src.slot if isinstance(e, SlotLost) else src.publication
                slot.services.alert_now(rule, obj, Severity.PAGE, e.message, e.fix)
                raise
        finally:
            await self._stop_background()
            if self._force_stop is not None:
                self._force_stop.cancel()
            await slot.destinations.close()
            await slot.services.stop()

    async def _open_destinations(self, slot: SlotRun, info: SourceInfo) -> None:
        tracker = slot.tracker
        services = slot.services
        # Transforms, checked against the published tables' columns (config errors).
        chains = build_chains(
            self.config.destinations, {n: t.columns for n, t in info.tables.items()}
        )

        def hooks_for(name: str) -> list[DeliveryHook]:
            completion = CompletionHook(
                name,
                tracker,
                self.stats,
                until_lsn=self.until_lsn,
                request_stop=self.request_stop,
            )
            chain = chains.get(name)
            resume = (
                [ResumeHook(chain, finish=lambda e: _router(slot).finish(name, e))]
                if chain is not None
                else []
            )
            return [*resume, completion, services.delivery_hook(name)]

        # The slot admits one walrelay at a time: it alone records in its ledger keys.
        slot.destinations = await open_destinations(
            self.config, self._sink_factory, hooks_for, ledger_sole_writer=True
        )
        slot.router = Router(
            self.config.destinations,
            slot.destinations.by_name,
            EnvelopeBuilder(TypeRegistry(), key_columns=info.key_columns),
            tracker,
            ignore_table=self.config.heartbeat.table,
            chains=chains,
            source=self.config.source,
            table_oids={name: t.oid for name, t in info.tables.items()},
            renamed={t.oid: t.name for name, t in info.tables.items() if t.name != name},
        )
        self.stats.router = slot.router
        for dest in slot.destinations.by_name.values():
            dest.start()

    def _start_background(self) -> None:
        """Heartbeats and outbox partition upkeep: side tasks that never stop streaming."""
        if self.heartbeat is not None:
            self._background.append(
                asyncio.create_task(self.heartbeat.run(), name="walrelay-heartbeat")
            )
        ob = self.config.outbox
        if ob is not None and ob.maintain:
            from walrelay.outbox.partitions import upkeep_loop  # only with an outbox

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

    def _source_watch(self, slot: SlotRun) -> SourceWatch:
        router = slot.router
        assert router is not None
        src = self.config.source

        def destinations_of(table: str) -> list[str]:
            return [
                d.name for d in self.config.destinations if d.tables is None or table in d.tables
            ]

        return SourceWatch(
            dsn=src.dsn_value,
            slot=src.slot,
            publication=src.publication,
            tables=router.configured_names,
            destinations_of=destinations_of,
            alert=slot.services.alert_now,
            on_fatal=self.fail,
            interval=src.watch_interval,
        )

    def _on_heartbeat_lag(self, lag: float) -> None:
        self.stats.heartbeat_lag = lag

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

    # ---------------------------------------------------------------- connections

    def _new_session(self, slot: SlotRun, stream: ReplicationSource) -> ReplicationSession:
        router = slot.router
        assert router is not None
        hb = self.config.heartbeat
        return ReplicationSession(
            stream,
            source=self.config.source,
            router=router,
            tracker=slot.tracker,
            feedback=slot.feedback,
            stats=self.stats,
            backfills=slot.backfills,
            heartbeat=self.heartbeat,
            heartbeat_prefix=hb.prefix,
            heartbeat_table=hb.table,
            stop=self._stop,
            on_keepalive=self._stop_when_confirmed,
            resume=slot.resume,
        )

    async def _replicate(self, slot: SlotRun) -> None:
        """Connect, read (one session per connection), reconnect with backoff."""
        src = self.config.source
        backoff = Backoff(
            initial=src.reconnect.initial,
            multiplier=src.reconnect.multiplier,
            maximum=src.reconnect.max,
        )
        attempt = 0
        while not self.stopping:
            self._raise_fatal()
            stream = self._source_factory(src.dsn_value)
            start_lsn = slot.resume_lsn()
            try:
                await stream.start(src.slot, start_lsn, self._start_options())
            except ReplicationConnectionLost as e:
                busy = slot_busy_from_error(src.slot, str(e))
                if busy is None:
                    self._raise_if_fatal(str(e))
                elif not await self._end_stale_walsender():
                    raise busy from None
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
            session = self._session = self._new_session(slot, stream)
            feedback = asyncio.create_task(slot.feedback.run(stream), name="walrelay-feedback")
            self._session_task = asyncio.create_task(session.run(), name="walrelay-read")
            if self._fatal is not None:
                self._session_task.cancel()  # failed while connecting
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
                    await self._drain_and_confirm(slot, stream)
                feedback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feedback
                task = self._session_task
                if task is not None and not task.done():
                    # We were cancelled: do not leave the reader on a closing socket.
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                slot.resume = session.resume()
                self._session = None
                await stream.close()

    def _raise_if_fatal(self, message: str) -> None:
        self._raise_fatal()
        src = self.config.source
        slot = src.slot
        busy = slot_busy_from_error(slot, message)
        if busy is not None:
            raise busy
        if "does not exist" in message and "replication slot" in message:
            raise slot_dropped(slot)
        if "can no longer get changes" in message or "invalidated" in message:
            raise slot_invalidated(slot, message)
        if "does not exist" in message and f'publication "{src.publication}"' in message:
            raise publication_lost(src.publication, slot, list(src.tables), message)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        """Sleep ``delay``, cut short by a stop or a fatal error."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._fatal_set)]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._raise_fatal()

    async def _drain_and_confirm(self, slot: SlotRun, stream: ReplicationSource) -> None:
        timeout = self.config.shutdown_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        for dest in slot.destinations.by_name.values():
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            if not await dest.drain(left):
                log.warning(
                    "destination %s: %d event(s) not delivered within shutdown_timeout "
                    "(%.0fs); they will be delivered after restart",
                    dest.name,
                    dest.buffered_events + dest.in_flight,
                    timeout,
                )
        slot.feedback.send_status(stream)
        log.info(
            "confirmed %s to slot %s", format_lsn(slot.tracker.confirmed), self.config.source.slot
        )


def _router(slot: SlotRun) -> Router:
    """The slot's Router (set before any delivery starts)."""
    assert slot.router is not None
    return slot.router
