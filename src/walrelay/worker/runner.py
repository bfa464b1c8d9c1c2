"""One worker process: a consumer-group member feeding the usual delivery machinery.

The worker opens the destinations exactly as ``walrelay run`` does
(:func:`walrelay.engine.delivery.open_destinations`: sinks, the ledger,
failpoints, parking) and hands every record's event to the same
:class:`~walrelay.pipeline.router.Router`. What differs is where events
come from and what "safe" means: records of the partitions Kafka assigned,
and a safe *offset* per partition (:mod:`walrelay.worker.offsets`).

Threads: confluent-kafka's consumer blocks, so one thread owns it and does
everything that touches it -- ``consume``, the rebalance callbacks (which
librdkafka runs inside ``consume``), commits, ``close``. The event loop owns
everything else (tracker, router, destinations). The consumer thread hands
work to the loop with ``run_coroutine_threadsafe(...).result()`` and waits:
a full buffer therefore slows reading down (backpressure), and a rebalance
callback can wait for deliveries to finish.

Rebalance (``partition.assignment.strategy=cooperative-sticky``, so only
the partitions that move stop): on revoke the thread stops reading them (it
is inside the callback); from then on :class:`PartitionHook` drops their
events that have not reached a sink yet (not finished: the safe offset stays
below them), the thread waits up to ``revoke_timeout`` for those already at
a sink, commits the safe offsets -- synchronously, inside the callback,
while the member still holds the partitions in the group's generation --
and forgets them; the next owner reads the rest from the committed offset.
Nothing of theirs reaches a sink after that commit (what did would be
delivered twice). Waiting for the partition's whole backlog instead made
revokes run into ``revoke_timeout`` under load, and the deliveries still
running then were repeated by the next owner. Stopping is the same for every
partition, and the final commit is made before ``close()``: close's own
revoke callback runs while the member leaves the group, where a commit fails
(``Unknown member``, ``Broker handle destroyed``). A periodic commit that
races the member's rejoin after a callback is refused
(``ILLEGAL_GENERATION``): harmless, the next one carries the offsets. On
assign the worker re-reads every destination's parked events (another
member may have parked keys of these partitions) before their first record
is taken. On loss (the session expired) nothing is committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from walrelay.config import DestinationConfig, KafkaSinkConfig
from walrelay.engine.delivery import Destinations, SinkFactory, open_destinations
from walrelay.errors import ConfigError, SinkError
from walrelay.model import Event
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.parking.writes import ReadRows
from walrelay.pipeline.router import Router
from walrelay.pipeline.transforms import ResumeHook, TransformChain, build_chains
from walrelay.sinks.base import Sink, SinkContext
from walrelay.sinks.common import import_extra
from walrelay.sinks.kafka_offsets import KafkaOffsetsSink, Offsets
from walrelay.sinks.registry import build_sink
from walrelay.source.types import TypeRegistry
from walrelay.worker.config import WorkerFileConfig, is_kafka_exactly_once
from walrelay.worker.debezium_records import event_from_debezium
from walrelay.worker.group_lag import PartitionLag, read_group_lag
from walrelay.worker.offsets import OffsetTracker, Origin, OriginMap, TopicPartition
from walrelay.worker.records import NotAnEnvelope, event_from_record
from walrelay.worker.trim import GroupParked, GroupTrim, ReadLsns, commit_mark

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from walrelay.web.server import HttpServer

__all__ = ["PartitionHook", "Worker"]

log = logging.getLogger("walrelay.worker")

T = TypeVar("T")

GROUP_LAG_INTERVAL = 5.0
"""Seconds between two readings of the group's lag (for status, /metrics, the dashboard)."""
Ident = tuple[int, int, str]


def ident(event: Event) -> Ident:
    """What identifies one record's event at a destination (a router keeps these)."""
    return (event.commit_lsn, event.seq, event.table)


class PartitionHook(DeliveryHook):
    """A destination's link to the partitions: events of a partition no longer
    assigned (in the epoch they were read), or being revoked, are dropped
    before the sink -- a dropped event is not finished, so the safe offset
    stays below it and the next owner reads it again -- and every finished
    event counts into the offset tracker. It knows which events are at the
    sink, per partition (what a revoke waits for)."""

    def __init__(self, destination: str, worker: Worker) -> None:
        self.destination = destination
        self.worker = worker
        # id(event) -> its partition, for events handed to the sink and not finished.
        self.sending: dict[int, TopicPartition] = {}
        # id(event) of events dropped before the sink (their finish is not counted).
        self._dropped: set[int] = set()
        worker.partition_hooks.append(self)

    async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
        origins = self.worker.origins
        tracker = self.worker.tracker
        name = self.destination
        sending = self.sending
        keep = []
        for event in events:
            origin = origins.peek(name, ident(event))
            if origin is None:
                keep.append(event)
            elif tracker.sends(origin):
                keep.append(event)
                sending[id(event)] = origin.tp
            else:
                sending.pop(id(event), None)
                self._dropped.add(id(event))
        if len(keep) != len(events):
            self.worker.abandoned += len(events) - len(keep)
            self.worker.progress.set()
            return keep
        return events

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        origins = self.worker.origins
        tracker = self.worker.tracker
        name = self.destination
        dropped = self._dropped
        for event in events:
            origin = origins.pop(name, ident(event))
            key = id(event)
            self.sending.pop(key, None)
            if key in dropped:
                dropped.discard(key)
            elif origin is not None:
                tracker.finish(origin)
        self.worker.progress.set()

    def at_sink(self, tps: list[TopicPartition]) -> int:
        """Events of ``tps`` handed to the sink and not finished."""
        return sum(1 for tp in self.sending.values() if tp in tps)


class Worker:
    """A member of the consumer group ``worker.kafka.group`` (see the module docstring)."""

    def __init__(
        self,
        config: WorkerFileConfig,
        *,
        sink_factory: SinkFactory | None = None,
        name: str | None = None,
        index: int = 0,
    ) -> None:
        self.config = config
        # The process's number under --processes (its HTTP port is http.port + index).
        self.index = index
        self.kafka = config.worker.kafka
        self.engine_config = config.engine_config()
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.http: HttpServer | None = None
        self._sink_factory: SinkFactory = sink_factory or self._build_sink
        # Kafka -> Kafka exactly once: the worker's only destination (see the config).
        self.eos_destination = next(
            (d.name for d in config.destinations if is_kafka_exactly_once(d)), None
        )
        self.eos_sink: KafkaOffsetsSink | None = None
        self._consumer: Consumer | None = None
        self.partition_hooks: list[PartitionHook] = []
        # Set once the final commit is made: close()'s revoke callback does nothing more.
        self._closing = False
        self.tracker = OffsetTracker()
        self.origins = OriginMap()
        # Dedup state trimming (walrelay.worker.trim): what was read, for commit marks.
        self.read_lsns = ReadLsns()
        self.trim: GroupTrim | None = None
        self.destinations = Destinations()
        self.router: Router | None = None
        # Transforms (no catalog here: a worker has no source database to check them against).
        self._chains: dict[str, TransformChain] = build_chains(config.destinations)
        self.progress = asyncio.Event()
        self.started = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Stats.
        self.abandoned = 0  # events of revoked partitions dropped before the sink
        self.not_envelopes = 0  # records skipped: not a walrelay envelope
        self.tombstones = 0  # format debezium: null values after deletes (no event)
        self.rebalances = 0
        self.member_id: str | None = None
        # The whole group's lag, read from the cluster while http is on (group_lag.py).
        self.group_lag: list[PartitionLag] | None = None
        self.group_lag_at: float | None = None
        self.group_lag_error: str | None = None

    # -- control ----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("worker %s: stopping: finishing in-flight deliveries", self.name)
            self._stop.set()

    # -- run --------------------------------------------------------------------

    async def run(self) -> None:
        """Join the group and deliver until :meth:`request_stop`."""
        self._loop = asyncio.get_running_loop()
        ck = import_extra("kafka", "confluent-kafka", "confluent_kafka")
        self.destinations = await open_destinations(
            self.engine_config, self._sink_factory, self._hooks_for
        )
        lag_task: asyncio.Task[None] | None = None
        trim_task: asyncio.Task[None] | None = None
        try:
            self.router = Router(
                self.config.destinations,
                self.destinations.by_name,
                EnvelopeBuilder(TypeRegistry()),
                LsnTracker(),  # unused: a worker counts per offset (take_counts)
                chains=self._chains,
            )
            for dest in self.destinations.by_name.values():
                dest.start()
            consumer = self._consumer = ck.Consumer(self._consumer_config())
            await asyncio.to_thread(self._check_topics, ck, consumer)
            await self._start_http()
            if self.http is not None:
                lag_task = asyncio.create_task(self._watch_group_lag(ck))
            trim_task = self._start_trim(ck)
            self.started.set()
            await asyncio.to_thread(self._consume_loop, ck, consumer)
        finally:
            for task in (lag_task, trim_task):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if self.http is not None:
                await self.http.stop()
            await self.destinations.close()

    async def _start_http(self) -> None:
        """/healthz, /metrics and /api/status (walrelay.worker.status), when configured."""
        cfg = self.config.http
        if not cfg.enabled:
            return
        from walrelay.web.auth import resolve_token
        from walrelay.web.server import HttpServer
        from walrelay.worker.status import WorkerStatus

        port = cfg.port + self.index if cfg.port else 0
        try:
            token, where = resolve_token(cfg, self.kafka.group, create=True)
            server = HttpServer(WorkerStatus(self), host=cfg.listen, port=port, token=token)
            await server.start()
        except Exception as e:
            log.error("worker %s: http is off: %s", self.name, e)
            return
        self.http = server
        log.info("worker %s: http on %s (API token from %s)", self.name, server.url, where)

    def _start_trim(self, ck: Any) -> asyncio.Task[None] | None:
        """Trim the destinations' ledger / applied-events rows below the group's
        replay floor (walrelay.worker.trim), if any destination keeps such rows."""
        if self.eos_destination is not None or not self.destinations.trim_targets():
            return None  # Kafka -> Kafka exactly once (the only destination) keeps no rows
        k = self.kafka
        store = self.destinations.parking
        parked = None
        if store is not None and store.destinations:
            cfg = self.engine_config
            parked = GroupParked(cfg.state_dsn, cfg.state.schema, sorted(store.destinations))
        self.trim = GroupTrim(
            targets=self.destinations.trim_targets,
            oldest_parked=self.destinations.oldest_parked,
            retention=self.config.worker.dedup_retention,
            group_parked=parked,
        )
        settings = {**self._consumer_config(), "client.id": f"walrelay-{self.name}-trim"}
        timeout = min(30.0, max(5.0, k.session_timeout))
        return asyncio.create_task(self.trim.run(ck, settings, list(k.topics), timeout))

    async def _watch_group_lag(self, ck: Any) -> None:
        k = self.kafka
        settings = {
            **self._consumer_config(),
            "client.id": f"walrelay-{self.name}-lag",  # never subscribes: not a member
        }
        timeout = min(30.0, max(5.0, k.session_timeout))
        reader: Any = None
        try:
            while True:
                try:
                    reader = reader or ck.Consumer(settings)
                    lag = await asyncio.to_thread(
                        read_group_lag, ck, reader, list(k.topics), timeout
                    )
                except Exception as e:  # the cluster did not answer: status says so
                    self.group_lag_error = str(e)
                    log.debug("worker %s: reading the group's lag failed: %s", self.name, e)
                else:
                    self.group_lag, self.group_lag_at = lag, time.time()
                    self.group_lag_error = None
                await asyncio.sleep(GROUP_LAG_INTERVAL)
        finally:
            if reader is not None:
                await asyncio.to_thread(reader.close)

    def group_lag_status(self) -> dict[str, Any] | None:
        """The group's lag per partition (every member's), or None before the first
        reading; ``owner`` is this worker's name for its own partitions."""
        if self.group_lag is None and self.group_lag_error is None:
            return None
        mine = self.tracker.partitions
        parts = [
            {**p.as_dict(), "owner": self.name if (p.topic, p.partition) in mine else None}
            for p in self.group_lag or ()
        ]
        return {
            "partitions": parts,
            "lag_records": sum(p["lag_records"] for p in parts),
            "as_of": self.group_lag_at,
            "error": self.group_lag_error,
        }

    def trim_status(self) -> dict[str, Any] | None:
        """The dedup rows' trim floor (walrelay.worker.trim), or None when not trimming."""
        return None if self.trim is None else self.trim.status()

    def _check_topics(self, ck: Any, consumer: Consumer) -> None:
        """The cluster answers and has the topics: else one clear error at start."""
        k = self.kafka
        try:
            metadata = consumer.list_topics(timeout=min(30.0, max(5.0, k.session_timeout)))
        except ck.KafkaException as e:
            consumer.close()
            raise ConfigError(
                f"worker: cannot reach the Kafka cluster at {k.bootstrap}: {e.args[0].str()}",
                fix="check worker.kafka.bootstrap and that the brokers run",
            ) from None
        missing = [t for t in k.topics if t not in metadata.topics or metadata.topics[t].error]
        if missing:
            consumer.close()
            raise ConfigError(
                f"worker: topic(s) {', '.join(missing)} do not exist at {k.bootstrap}",
                fix="check worker.kafka.topics against the relay's kafka sink topic template"
                " (the relay's kafka sink creates them when it starts)",
            )

    def _build_sink(self, d: DestinationConfig) -> Sink:
        slot = self.config.worker.slot
        if d.name == self.eos_destination and isinstance(d.sink, KafkaSinkConfig):
            # Stable across restarts on this host, unique per host and process: a
            # restarted worker's init_transactions aborts what its predecessor left open.
            member = f"{self.kafka.group}.{socket.gethostname()}.{self.index}"
            self.eos_sink = KafkaOffsetsSink(
                d.sink, SinkContext(slot=slot, destination=d.name), source=self, member=member
            )
            return self.eos_sink
        return build_sink(d.sink, slot=slot, destination=d.name, tables=[])

    # -- the consumed offsets of the exactly-once Kafka sink (ConsumedOffsets) ------

    def prepare(self, events: Sequence[Event]) -> tuple[Sequence[Event], Offsets, Any]:
        """On the loop, in one step: the events whose partitions are still ours,
        the offsets to commit with them, and the group metadata (of a generation
        in which those partitions are ours: see walrelay.sinks.kafka_offsets)."""
        name = self.eos_destination
        assert name is not None and self._consumer is not None
        tracker = self.tracker
        origins = self.origins
        keep: list[Event] = []
        finishing: Counter[Origin] = Counter()
        seen: Counter[Ident] = Counter()
        for event in events:
            key = ident(event)
            origin = origins.nth(name, key, seen[key])
            seen[key] += 1
            if origin is None:
                keep.append(event)
            elif tracker.owns(origin):
                keep.append(event)
                finishing[origin] += 1
        if len(keep) != len(events):
            self.abandoned += len(events) - len(keep)
        offsets = [(t, p, o) for (t, p), o in tracker.to_commit_after(finishing)]
        return keep, offsets, self._consumer.consumer_group_metadata()

    def committed(self, offsets: Offsets) -> None:
        for t, p, o in offsets:
            self.tracker.committed((t, p), o)

    def group_offsets(
        self, partitions: list[tuple[str, int]], timeout: float
    ) -> dict[tuple[str, int], int]:
        ck = import_extra("kafka", "confluent-kafka", "confluent_kafka")
        assert self._consumer is not None
        asked = [ck.TopicPartition(t, p) for t, p in partitions]
        return {(c.topic, c.partition): c.offset for c in self._consumer.committed(asked, timeout)}

    def _hooks_for(self, name: str) -> list[DeliveryHook]:
        chain = self._chains.get(name)
        if chain is None:
            return [PartitionHook(name, self)]
        # A transform step that failed on an event: retried from that step
        # before every send, never sent as it is (walrelay.pipeline.transforms).
        resume = ResumeHook(chain, finish=lambda e: self._routed().finish(name, e))
        return [resume, PartitionHook(name, self)]

    def _routed(self) -> Router:
        assert self.router is not None  # set before any delivery starts
        return self.router

    def _consumer_config(self) -> dict[str, Any]:
        k = self.kafka
        return {
            **k.options,
            "bootstrap.servers": k.bootstrap,
            "group.id": k.group,
            "client.id": f"walrelay-{self.name}",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(k.session_timeout * 1000),
            "heartbeat.interval.ms": int(k.heartbeat_interval * 1000),
            "logger": logging.getLogger("walrelay.worker.librdkafka"),
        }

    # -- the consumer thread ----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the event loop and wait for it (consumer thread only)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _consume_loop(self, ck: Any, consumer: Consumer) -> None:
        def on_assign(c: Consumer, partitions: list[Any]) -> None:
            self._on_assign(c, partitions)

        def on_revoke(c: Consumer, partitions: list[Any]) -> None:
            self._on_revoke(ck, c, partitions, lost=False)

        def on_lost(c: Consumer, partitions: list[Any]) -> None:
            self._on_revoke(ck, c, partitions, lost=True)

        consumer.subscribe(
            list(self.kafka.topics), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost
        )
        interval = self.kafka.commit_interval
        next_commit = time.monotonic() + interval
        try:
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=self.kafka.poll_batch, timeout=0.1)
                if messages:
                    self._call(self._feed(messages))
                if time.monotonic() >= next_commit:
                    self._note_watermarks(ck, consumer)
                    self._commit(ck, consumer, None)
                    next_commit = time.monotonic() + interval
            # As on revoke: what is at a sink finishes, the rest is the next owner's.
            owned = list(self.tracker.partitions)
            drained = self._call(self._drain_revoking(owned, self.config.shutdown_timeout))
            if not drained:
                log.warning(
                    "worker %s: shutdown_timeout reached with deliveries in flight; their"
                    " records are read again by the next owner",
                    self.name,
                )
            self._final_commit(ck, consumer, owned, "on stop")
            # Nothing of these partitions is sent after their final commit (it would be
            # sent again by the next owner), and close()'s revoke callback, which runs
            # while the member leaves the group, commits nothing (it would fail).
            self._closing = True
            self._call(self._revoked(list(self.tracker.partitions)))
        finally:
            consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.rebalances += 1
        with_member = consumer.memberid()
        self.member_id = with_member
        if tps:
            log.info("worker %s: assigned %s", self.name, _show(tps))
        starts: dict[TopicPartition, int] = {}
        if partitions:
            try:
                for c in consumer.committed(partitions, timeout=10):
                    if c.error is None and c.offset >= 0:
                        starts[(c.topic, c.partition)] = c.offset
            except Exception as e:  # only status shows it: reading starts there anyway
                log.debug("worker %s: committed offsets unknown: %s", self.name, e)
        self._call(self._assigned(tps, starts))

    def _on_revoke(self, ck: Any, consumer: Consumer, partitions: list[Any], *, lost: bool) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.rebalances += 1
        if self._closing:
            self._call(self._revoked(tps))
            return
        if lost:
            log.warning(
                "worker %s: lost %s (session expired): their pending events are abandoned"
                " and read again by the next owner",
                self.name,
                _show(tps),
            )
        else:
            log.info("worker %s: revoking %s", self.name, _show(tps))
            # Events of tps not yet at a sink are dropped from now on; wait for those
            # that are, then commit -- here, inside the callback, while this member
            # still holds the partitions in the group's current generation.
            drained = self._call(self._drain_revoking(tps, self.kafka.revoke_timeout))
            if not drained:
                log.warning(
                    "worker %s: revoke_timeout reached: abandoning the in-flight events of %s"
                    " (the next owner delivers them again, with the same ids)",
                    self.name,
                    _show(tps),
                )
            self._final_commit(ck, consumer, tps, "on revoke")
        self._call(self._revoked(tps))

    def _final_commit(
        self, ck: Any, consumer: Consumer, tps: list[TopicPartition], when: str
    ) -> None:
        """The last commit of ``tps`` by this member; a failure is a warning (the
        next owner repeats what this member delivered since its last commit)."""
        if not self._commit(ck, consumer, tps):
            log.warning(
                "worker %s: the final offset commit %s of %s failed (see above): the next"
                " owner delivers their events since the last commit again, with the same ids",
                self.name,
                when,
                _show(tps),
            )

    def _commit(self, ck: Any, consumer: Consumer, tps: list[TopicPartition] | None) -> bool:
        """Commit the safe offsets of ``tps`` (all: None); False if that failed."""
        plan = self._call(self._commit_plan(tps))
        if not plan:
            return True
        if self.eos_sink is not None:
            # Through the sink's transactions, behind the one in flight: a plain
            # commit could land after it and move the offset back.
            in_txn = [(t, p, o) for (t, p), o, _mark in plan]
            group = consumer.consumer_group_metadata()
            return self._call(self._commit_in_transaction(in_txn, group))
        # Each offset carries its LSN mark: the group's trim floor (walrelay.worker.trim).
        offsets = [ck.TopicPartition(t, p, o, metadata=mark) for (t, p), o, mark in plan]
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except ck.KafkaException as e:
            err = e.args[0]
            # During a rebalance a commit can be refused; the next one carries the offsets.
            rebalancing = err.code() in (
                ck.KafkaError.ILLEGAL_GENERATION,
                ck.KafkaError.REBALANCE_IN_PROGRESS,
                ck.KafkaError._NO_OFFSET,
            )
            # A periodic commit racing a rebalance (the member rejoining after a
            # callback) is refused; the next one, or the revoke callback, carries it.
            (log.debug if rebalancing and tps is None else log.warning)(
                "worker %s: committing offsets failed: %s", self.name, err.str()
            )
            return False
        done = [((r.topic, r.partition), r.offset) for r in result or () if r.error is None]
        self._call(self._committed(done))
        return len(done) == len(plan)

    def _note_watermarks(self, ck: Any, consumer: Consumer) -> None:
        marks: list[tuple[TopicPartition, int]] = []
        for tp in list(self.tracker.partitions):
            part = ck.TopicPartition(tp[0], tp[1])
            try:
                _low, high = consumer.get_watermark_offsets(part, cached=True)
                if high < 0:  # nothing fetched yet: ask the broker
                    _low, high = consumer.get_watermark_offsets(part, timeout=1.0)
            except ck.KafkaException:
                continue
            if high >= 0:
                marks.append((tp, high))
        if marks:
            self._call(self._set_watermarks(marks))

    # -- on the event loop ------------------------------------------------------

    async def _feed(self, messages: list[Message]) -> None:
        router = self.router
        assert router is not None
        tracker = self.tracker
        origins = self.origins
        debezium = self.kafka.format == "debezium"
        topic_index = {t: i for i, t in enumerate(self.kafka.topics)} if debezium else {}
        for msg in messages:
            error = msg.error()
            if error is not None:
                log.warning("worker %s: consumer error: %s", self.name, error)
                continue
            topic = msg.topic()
            partition = msg.partition()
            offset = msg.offset()
            assert topic is not None and partition is not None and offset is not None
            part = tracker.partitions.get((topic, partition))
            if part is None:
                continue  # not (or no longer) ours
            if part.next is not None and offset < part.next:
                # The consumer went back (an offset reset): start the partition over;
                # its pending events are abandoned and read again from here.
                log.warning(
                    "worker %s: %s[%d] went back from offset %d to %d; reading it again",
                    self.name,
                    topic,
                    partition,
                    part.next,
                    offset,
                )
                tracker.revoke((topic, partition))
                tracker.assign((topic, partition), offset)
                part = tracker.partitions[(topic, partition)]
            origin = Origin((topic, partition), part.epoch, offset)
            event: Event | None
            try:
                if debezium:
                    event = event_from_debezium(
                        msg.value(),
                        msg.key(),
                        msg.headers(),
                        partition=partition,
                        offset=offset,
                        topic_index=topic_index.get(topic, 0),
                    )
                else:
                    event = event_from_record(msg.value(), msg.key(), msg.headers())
            except NotAnEnvelope as e:
                self.not_envelopes += 1
                log.error(
                    "worker %s: %s[%d] offset %d skipped: not a %s event: %s",
                    self.name,
                    topic,
                    partition,
                    offset,
                    self.kafka.format,
                    e,
                )
                tracker.consumed(origin, 0)
                continue
            if event is None:  # a Debezium tombstone: nothing to deliver
                self.tombstones += 1
                tracker.consumed(origin, 0)
                continue
            self.read_lsns.read(origin, event.commit_lsn)
            blocked = router.dispatch(event, router.routes_for(event.table, event.op))
            counts = router.take_counts()
            total = 0
            if counts:
                key = ident(event)
                for name, n in counts.items():
                    total += n
                    origins.add(name, key, origin)
            tracker.consumed(origin, total)
            _kind, stamp = msg.timestamp()
            if total:
                part.pending_times[offset] = stamp / 1000 if stamp > 0 else time.time()
            if blocked:
                for dest, shaped in blocked:
                    await dest.put(shaped)

    async def _assigned(self, tps: list[TopicPartition], starts: dict[TopicPartition, int]) -> None:
        await self._reload_parked()
        for tp in tps:
            self.tracker.assign(tp, starts.get(tp))

    async def _revoked(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.tracker.revoke(tp)

    async def _reload_parked(self) -> None:
        """Re-read every destination's parked events, behind the writes queued so far."""
        store = self.destinations.parking
        if store is None:
            return
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for dest in store.destinations.values():
            fut: asyncio.Future[None] = loop.create_future()

            def applied(write: ReadRows, dest: Any = dest, fut: asyncio.Future[None] = fut) -> None:
                dest.apply_rows(write.snapshot, initial=False)
                if not fut.done():
                    fut.set_result(None)

            store.enqueue(ReadRows(dest.name, applied))
            waits.append(fut)
        await asyncio.gather(*waits)

    async def _drain_revoking(self, tps: list[TopicPartition], timeout: float) -> bool:  # noqa: ASYNC109
        """Stop sending events of ``tps`` and wait until none is at a sink; False
        on timeout. (Their events still buffered are dropped when taken.)"""
        self.tracker.start_revoking(tps)
        hooks = self.partition_hooks
        deadline = time.monotonic() + timeout
        while any(h.at_sink(tps) for h in hooks):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progress.clear()
            try:
                async with asyncio.timeout(left):
                    await self.progress.wait()
            except TimeoutError:
                return not any(h.at_sink(tps) for h in hooks)
        return True

    async def _commit_plan(
        self, tps: list[TopicPartition] | None
    ) -> list[tuple[TopicPartition, int, str | None]]:
        """The offsets to commit, each with its LSN mark (walrelay.worker.trim)."""
        self.read_lsns.retain(self.tracker.partitions)
        plan = []
        for tp, offset in self.tracker.to_commit(tps):
            lsn = self.read_lsns.mark(tp, offset)
            plan.append((tp, offset, None if lsn is None else commit_mark(lsn)))
        return plan

    async def _commit_in_transaction(self, offsets: Offsets, group: Any) -> bool:
        sink = self.eos_sink
        assert sink is not None
        try:
            self.committed(await sink.commit_offsets(offsets, group))
        except SinkError as e:
            log.info("worker %s: committing offsets failed: %s", self.name, e)
            return False
        return True

    async def _committed(self, done: list[tuple[TopicPartition, int]]) -> None:
        for tp, offset in done:
            self.tracker.committed(tp, offset)

    async def _set_watermarks(self, marks: list[tuple[TopicPartition, int]]) -> None:
        for tp, high in marks:
            part = self.tracker.partitions.get(tp)
            if part is not None:
                part.high_watermark = high

    # -- status -------------------------------------------------------------------

    def partitions_status(self) -> list[dict[str, Any]]:
        """Per assigned partition: safe and committed offset, lag in records and seconds."""
        now = time.time()
        out = []
        for (topic, partition), part in sorted(self.tracker.partitions.items()):
            oldest = next(iter(part.pending_times.values()), None)
            lag = part.lag
            seconds = now - oldest if oldest is not None else (0.0 if lag == 0 else None)
            out.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "safe_offset": part.safe,
                    "committed_offset": part.committed,
                    "high_watermark": part.high_watermark,
                    "lag_records": lag,
                    "lag_seconds": None if seconds is None else round(max(0.0, seconds), 3),
                    "pending_events": sum(part.pending.values()),
                    "consumed_total": part.consumed_total,
                }
            )
        return out


def _show(tps: list[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "(none)"
