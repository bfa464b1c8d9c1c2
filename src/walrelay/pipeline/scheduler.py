"""Delivery to one destination: buffer -> batches -> ``sink.deliver`` -> retry.

A :class:`Destination` owns one :mod:`buffer <walrelay.pipeline.buffer>` and
one scheduler task. The scheduler wakes when an event arrives or a batch
finishes, takes the events that may start now (see
:class:`~walrelay.pipeline.buffer.KeyedBuffer`), cuts them into batches of at
most ``sink.batch_size`` and runs one asyncio task per batch in flight.

Limits:

* unordered sinks: at most ``max_in_flight`` *events* being sent (so a batch
  holds at most ``min(sink.batch_size, max_in_flight)`` events); with
  ``max_in_flight`` above 1, an event the sink took whose ``after_send``
  hooks still run (the ledger recording its id) leaves its slot to the next
  one, though it stays unfinished and keeps its keys (sent and being
  recorded together at most :data:`RECORDING_FACTOR` times
  ``max_in_flight``; ``max_in_flight: 1`` stays one event at a time, in
  order); and at most
  ``sink.max_batches`` batches when the sink has that attribute (a sink that
  delivers on a few connections: a batch is cut only when one of them can
  take it, so events arriving meanwhile wait in the buffer and make the next
  batch full, instead of waiting in the sink as many small batches);
* ordered sinks (``sink.ordered``): exactly one batch in flight, batches cut
  strictly in id order, each up to ``sink.batch_size`` events;
  ``max_in_flight`` does not apply. A :class:`~walrelay.sinks.base.PipelinedSink`
  (the file sink) gets the next batch as soon as the previous one is *placed*
  (``place`` returned: written), while earlier ones wait to be durable
  (``fsync``): one batch being placed, up to :data:`PIPELINE_DEPTH` in flight.
  When it has placed batches and nothing more to place now, it tells the
  sink (``caught_up``): Kafka's exactly_once sink then commits the
  transaction those batches share.

A delivery task of an unordered sink that finishes its batch takes the
next one itself when it may (:meth:`Destination._next_batch`: nothing held,
nothing parked, a free slot), instead of ending and waking the scheduler to
start a new task: with batches of one event (webhooks) the task and the wake
per event were a third of the scheduler's cost. Events are taken exactly as
the scheduler would take them.

Failures: a batch whose ``deliver`` raises :class:`~walrelay.errors.SinkError`
keeps its keys (so nothing later of the same keys overtakes it) and is retried
*as a whole* in memory, after :class:`~walrelay.pipeline.backoff.Backoff`
(exponential, full jitter, ``retry_after`` honoured). Retrying the whole batch
is the simplest correct thing: sinks are idempotent per event id, and a batch
never holds two events of one key unless the sink is ordered. Any other
exception from a sink is a bug in the sink: it is logged with its traceback
and treated like a transient failure, so the events are never lost.

Everything around a send that is not scheduling hangs off the destination
as :class:`~walrelay.pipeline.hooks.DeliveryHook` s (the ledger's check and
record, failpoints, the LSN tracker's accounting, latency metrics): the
scheduler calls ``before_send`` / ``after_send`` around ``sink.deliver``,
``on_finished`` once per finished event, and before each retry asks the
hooks (then parking) for a verdict: ``"retry"`` (the default) or
``"parked"``, meaning the batch is stored durably elsewhere and counts as
finished (keys released, ``on_finished`` called).

Parking (unordered sinks only; :class:`Parking`, implemented by
:class:`walrelay.pipeline.parking.DestinationParking`): once an event is
parked, every later event sharing one of its keys must go behind it. The
scheduler asks ``parking.blocks(batch)`` for each batch it takes (an empty
answer at once while nothing is parked) and *diverts* blocked events to
parking instead of the sink. A diverted event releases its keys in the
buffer at once (the next event of the key is diverted right behind it, into
the same FIFO, so parking receives a key's events in id order); it is
finished (the LSN tracker may pass it) only when parking reports it durably
written. While parking is at its cap (``parking.paused``), diverting stops:
such events stay taken and keep their keys (:attr:`Destination.held`), and
``put`` waits -- replication pauses -- until the backlog drains.

Parking is made with the destination, which it gets as its host
(:class:`walrelay.pipeline.parking.ParkingHost`: ``finish_diverted``,
``reserve`` / ``release``, ``deliver_parked``, ``wake``): the destination takes
a :data:`ParkingFactory` and calls it once, with itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeAlias

from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.buffer import EventBuffer, make_buffer
from walrelay.pipeline.hooks import DeliveryHook, FailureDecision, overriding
from walrelay.sinks.base import Sink, is_pipelined

__all__ = [
    "PIPELINE_DEPTH",
    "Destination",
    "FailureDecision",
    "OnFailure",
    "Parking",
    "ParkingFactory",
]

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 8
"""Batches of a pipelined ordered sink in flight at once (placed, not yet durable)."""

RECORDING_FACTOR = 2
"""Unordered sinks with ``max_in_flight`` above 1: events the sink took whose
``after_send`` hooks (the ledger's record) still run leave their
``max_in_flight`` slot; sent and being recorded together, at most this many
times ``max_in_flight`` (which bounds what a crash can resend)."""

OnFailure = Callable[[Sequence[Event], BaseException, int], Awaitable[FailureDecision]]
_Decider = Callable[[Sequence[Event], BaseException, int], Awaitable[FailureDecision | None]]


class Parking(Protocol):
    """What a destination needs from its parking."""

    @property
    def paused(self) -> bool:
        """True while parking is at its cap: take no more events."""
        ...

    async def wait_unpaused(self) -> None: ...

    def blocks(self, batch: Sequence[Event]) -> list[Event]:
        """The events of ``batch`` that must go behind a parked event (a shared
        key, or a barrier); empty, cheaply, while nothing is parked."""
        ...

    def divert(self, events: list[Event]) -> bool:
        """Park ``events`` behind their keys; they are finished later through
        :meth:`Destination.finish_diverted`. False (nothing done) when paused."""
        ...

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        """After ``attempts`` failed deliveries of ``batch``: ``"parked"`` once it
        is durably parked, or ``"retry"`` (in memory)."""
        ...

    def wake(self) -> None:
        """A delivery slot may be free (see :meth:`Destination.reserve`)."""
        ...

    @property
    def idle(self) -> bool:
        """True while nothing is parked or waiting to be retried: live events
        may take every free slot (cheap: asked after every delivered batch)."""
        ...


ParkingFactory: TypeAlias = Callable[["Destination"], Parking]
"""Makes a destination's parking, given the destination (its host)."""


class Destination:
    """One destination: bounded buffer, scheduler task, batches in flight.

    ``hooks`` (see :mod:`walrelay.pipeline.hooks`) see every send, failure
    and finished event; their ``on_finished`` is called exactly once per
    event (in batches), when the event was delivered or parked.
    """

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        max_in_flight: int = 1,
        max_buffer_bytes: int = 64 << 20,
        backoff: Backoff | None = None,
        hooks: Sequence[DeliveryHook] = (),
        parking: ParkingFactory | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if sink.batch_size < 1:
            raise ValueError(f"sink batch_size must be >= 1, got {sink.batch_size}")
        self.name = name
        self.sink = sink
        self.max_in_flight = max_in_flight
        self.ordered = bool(sink.ordered)
        self.backoff = backoff or Backoff()
        self._batch_size = sink.batch_size
        max_batches = getattr(sink, "max_batches", None)
        self._max_batches: int | None = None if self.ordered else max_batches
        self._running = 0  # delivery tasks of live batches (unordered sinks)
        self.hooks: tuple[DeliveryHook, ...] = tuple(hooks)
        # Per method, only the hooks that do something there (after_send in reverse).
        self._before_send = overriding(self.hooks, "before_send")
        self._after_send = overriding(self.hooks, "after_send")[::-1]
        # Sent batches leave their slot while after_send runs (_send_and_record).
        self._frees_slots = not self.ordered and bool(self._after_send) and max_in_flight > 1
        self._on_failure = overriding(self.hooks, "on_failure")
        self._on_finished = overriding(self.hooks, "on_finished")
        if parking is not None and self.ordered:
            raise ValueError(
                f"destination {name!r}: an ordered sink cannot park events (a parked"
                " event would be overtaken)"
            )
        # Taken events that must be diverted while parking is paused (keep their keys).
        self._held: list[Event] = []
        self._diverting = 0  # diverted, not yet durably parked
        self._external = 0  # slots reserved by parking's retry loop
        self._recording = 0  # sent, in after_send (ledger record): slots left
        self._buffer: EventBuffer = make_buffer(self.ordered, max_buffer_bytes)
        self._pipelined = sink if self.ordered and is_pipelined(sink) else None
        self._placing: list[Event] | None = None  # the pipelined batch not yet placed
        self._batches = 0  # pipelined batches in flight
        self._wake = asyncio.Event()
        # True from a try_put's wake until the scheduler clears it: later
        # try_puts skip the redundant (and comparatively costly) wake.set().
        self._woken = False
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stopped = False
        # Stats.
        self.delivered_total = 0
        self.parked_total = 0
        self.failures_total = 0
        self.retrying = 0  # batches currently waiting to be retried
        self.last_error: str | None = None
        # Set by the Router once it hands over an event a transform failed on
        # (Event.failure): batches are then split so that such an event fails
        # alone and is parked alone, while other keys' events go out.
        self.may_fail = False
        # Last: parking gets this destination as its host.
        self._parking = parking(self) if parking is not None else None

    # -- stats ------------------------------------------------------------------

    @property
    def buffered_events(self) -> int:
        """Events waiting to be handed to the sink (not counting :attr:`in_flight`)."""
        buffer = self._buffer
        return buffer.count - buffer.in_flight

    @property
    def buffered_bytes(self) -> int:
        """Bytes held, waiting *and* in flight: the quantity ``max_buffer_bytes``
        bounds (an event's space is freed when it is finished)."""
        return self._buffer.nbytes

    @property
    def in_flight(self) -> int:
        """Events handed to the sink (or waiting to be retried) and not finished."""
        return self._buffer.in_flight

    @property
    def blocked(self) -> bool:
        """True while a ``put`` is waiting for buffer space (backpressure)."""
        return self._buffer.blocked

    @property
    def parking(self) -> Parking | None:
        """Parking (None: failures are retried in memory only)."""
        return self._parking

    @property
    def held(self) -> int:
        """Events waiting to be parked while parking is at its cap."""
        return len(self._held)

    @property
    def paused(self) -> bool:
        """True while parking is at its cap: ``put`` waits (replication paused)."""
        parking = self._parking
        return parking is not None and parking.paused

    def _unfinished(self) -> int:
        return self._buffer.count + self._diverting

    # -- feeding ----------------------------------------------------------------

    def try_put(self, event: Event) -> bool:
        """Hand an event over if it fits now, without waiting (the hot path)."""
        parking = self._parking
        if parking is not None and parking.paused:
            return False
        if self._buffer.try_push(event):
            if not self._woken:
                self._woken = True
                self._wake.set()
            return True
        return False

    async def put(self, event: Event) -> None:
        """Hand an event over (in id order). Waits while the buffer is full,
        and while parking is at its cap (replication paused)."""
        parking = self._parking
        if parking is not None:
            while parking.paused and not self._stopped:
                await parking.wait_unpaused()
        buffer = self._buffer
        if not buffer.try_push(event):
            await buffer.put(event)
        self._wake.set()

    def wake(self) -> None:
        """Run the scheduler again (parking has room, or events were finished)."""
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler task (events put before are delivered too)."""
        if self._stopped:
            raise RuntimeError(f"destination {self.name!r} was stopped")
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name=f"walrelay-scheduler-{self.name}"
            )

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every event put was finished. False on timeout (or stop)."""
        if not self._unfinished():
            return True
        if self._stopped:
            return False
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        finally:
            if fut in self._drain_waiters:
                self._drain_waiters.remove(fut)
        return not self._unfinished()

    async def stop(self) -> None:
        """Cancel the scheduler and the batches in flight; fail waiting puts.

        Events not finished stay unfinished (the confirmed LSN does not pass
        them; they are delivered again after a restart). Final.
        """
        self._stopped = True
        self._buffer.close()
        tasks = list(self._tasks)
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._resolve_drain()

    # -- the scheduler ------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            self._woken = False
            self._dispatch()

    def _dispatch(self) -> None:
        buffer = self._buffer
        if self.ordered:
            if self._pipelined is not None:
                if self._placing is None:
                    batch = buffer.take(self._batch_size) if self._batches < PIPELINE_DEPTH else []
                    if batch:
                        self._placing = batch
                        self._batches += 1
                        self._spawn(batch)
                    elif self._batches:
                        self._pipelined.caught_up()  # nothing more to place now
            elif not buffer.in_flight:
                batch = buffer.take(self._batch_size)
                if batch:
                    self._spawn(batch)
            return
        parking = self._parking
        held = self._held
        if held and parking is not None and parking.divert(held):
            self._diverted(held)
            self._held = held = []
        room = self._room()
        batch_size = self._batch_size
        max_batches = self._max_batches
        while room > 0 and (max_batches is None or self._running < max_batches):
            batch = buffer.take(min(room, batch_size))
            if not batch:
                break
            if parking is not None:
                # Events behind a parked event of their key go to the store. A
                # batch never holds two events of one key, so the order of the
                # checks inside it does not matter.
                divert = parking.blocks(batch)
                if divert:
                    if held or not parking.divert(divert):
                        held.extend(divert)  # keep their keys until the store has room
                    else:
                        self._diverted(divert)
                    if len(divert) == len(batch):
                        continue
                    diverted = {id(e) for e in divert}
                    batch = [e for e in batch if id(e) not in diverted]
            room -= len(batch)
            if self.may_fail and len(batch) > 1:
                failed = [e for e in batch if e.failure is not None]
                if failed:
                    for event in failed:
                        self._spawn([event])
                    batch = [e for e in batch if e.failure is None]
                    if not batch:
                        continue
            self._spawn(batch)

    def _spawn(self, batch: list[Event]) -> None:
        if not self.ordered:
            self._running += 1
        task = asyncio.get_running_loop().create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _room(self) -> int:
        """Events that may still go in flight (unordered sinks): ``max_in_flight``
        being sent, and sent and being recorded together at most
        ``RECORDING_FACTOR`` times that (:meth:`_send_and_record`)."""
        taken = self._buffer.in_flight - len(self._held) + self._external
        limit = self.max_in_flight
        return min(limit - (taken - self._recording), limit * RECORDING_FACTOR - taken)

    def _next_batch(self) -> list[Event] | None:
        """For a delivery task whose batch just finished: the next batch, when
        the plain case applies (unordered sink, nothing held or parked, a
        free slot), taken as :meth:`_dispatch` would; None otherwise (the
        scheduler decides then). Keeping the task saves creating one and
        waking the scheduler per batch."""
        if self.ordered or self._stopped or self._held or self.may_fail:
            return None
        parking = self._parking
        if parking is not None and not parking.idle:
            return None  # parked events get the first go at the slot
        room = self._room()
        if room <= 0:
            return None
        batch = self._buffer.take(min(room, self._batch_size))
        if not batch:
            return None
        if room - len(batch) > 0 and len(batch) == min(room, self._batch_size):
            self._wake.set()  # more may start: the scheduler takes them
        return batch

    def _diverted(self, events: list[Event]) -> None:
        """Parking took ``events``: release their keys and space now (the next
        event of each key goes to parking right behind it)."""
        self._diverting += len(events)
        self._buffer.done(events)

    def finish_diverted(self, events: Sequence[Event]) -> None:
        """Called by parking once diverted ``events`` are durably parked."""
        self._diverting -= len(events)
        self.parked_total += len(events)
        self._finished(events, parked=True)
        self._wake.set()
        if self._drain_waiters and not self._unfinished():
            self._resolve_drain()

    async def deliver_parked(self, events: Sequence[Event]) -> None:
        """Deliver parked events (for parking's retry loop) through the sink and its hooks."""
        await self.send(events)

    async def send(self, batch: Sequence[Event]) -> None:
        """``sink.deliver`` between the hooks' ``before_send`` and ``after_send``;
        for a pipelined sink, ``place`` then its awaitable, the batch counting as
        placed in between."""
        todo = await self._deliver_to_sink(batch)
        for hook in self._after_send:
            await hook.after_send(todo)

    async def _deliver_to_sink(self, batch: Sequence[Event]) -> Sequence[Event]:
        """The ``before_send`` hooks, then the sink; what the hooks left of ``batch``."""
        todo = batch
        for hook in self._before_send:
            todo = await hook.before_send(todo)
        pipelined = self._pipelined
        if pipelined is None:
            if todo:
                await self.sink.deliver(todo)
        else:
            durable = await pipelined.place(todo) if todo else None
            self._placed(batch)
            if durable is not None:
                await durable
        return todo

    async def _send_and_record(self, batch: Sequence[Event]) -> None:
        """:meth:`send` for an unordered sink with ``after_send`` hooks: once the
        sink took the batch, its slot goes to the next batch while the hooks
        run (a ledger's record waits a round trip or two, which would
        otherwise hold the slot idle). The events stay unfinished, holding
        their keys and the LSN, until the hooks are done."""
        todo = await self._deliver_to_sink(batch)
        sent = len(batch)
        self._recording += sent
        self._running -= 1
        if self._parking is not None:
            self._parking.wake()  # the store gets the first go at the freed slot
        self._wake.set()
        try:
            for hook in self._after_send:
                await hook.after_send(todo)
        finally:
            self._recording -= sent
            self._running += 1

    def _placed(self, batch: Sequence[Event]) -> None:
        """A pipelined batch is in place: the next one may start."""
        if self._placing is batch:
            self._placing = None
            self._wake.set()

    def reserve(self, n: int) -> int:
        """Take up to ``n`` of the ``max_in_flight`` slots for parking's retry
        loop (parked events count toward the destination's concurrency); parking
        holds a slot until the outcome is written, then :meth:`release`."""
        taken = max(0, min(n, self._room()))
        self._external += taken
        return taken

    def release(self, n: int) -> None:
        self._external -= n
        self._wake.set()  # live events get the first go at the slot, parking the next

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # _deliver catches everything a sink raises: this is a bug here.
            log.critical(
                "destination %s: delivery task crashed; its events stay unfinished",
                self.name,
                exc_info=exc,
            )

    async def _deliver(self, batch: list[Event]) -> None:
        next_batch: list[Event] | None = batch
        try:
            while next_batch is not None:
                next_batch = await self._deliver_one(next_batch)
        finally:
            # Before the scheduler runs again (the task ends in the step that woke it).
            if not self.ordered:
                self._running -= 1

    async def _deliver_one(self, batch: list[Event]) -> list[Event] | None:
        """Deliver ``batch`` (retrying) until it is finished; then the next
        batch this task may deliver (:meth:`_next_batch`), if any."""
        deliver = self._send_and_record if self._frees_slots else self.send
        attempts = 0
        while True:
            retry_after: float | None = None
            try:
                await deliver(batch)
            except SinkError as exc:
                error: BaseException = exc
                retry_after = exc.retry_after
            except Exception as exc:
                log.exception(
                    "destination %s: sink %s raised %s (a bug in the sink); retrying as if"
                    " it were a transient failure",
                    self.name,
                    type(self.sink).__name__,
                    type(exc).__name__,
                )
                error = exc
            else:
                return self._complete(batch, parked=False, take_next=True)
            attempts += 1
            self.failures_total += 1
            self.last_error = f"{type(error).__name__}: {error}"
            if await self._decide(batch, error, attempts) == "parked":
                self._complete(batch, parked=True)
                return None
            delay = self.backoff.delay(attempts, retry_after)
            log.warning(
                "destination %s: delivery of %d event(s) from %s failed (attempt %d): %s;"
                " retrying in %.2fs",
                self.name,
                len(batch),
                batch[0].id,
                attempts,
                self.last_error,
                delay,
            )
            self.retrying += 1
            if not self.ordered:
                # A batch waiting to be retried leaves its slot to other keys' batches.
                self._running -= 1
                self._wake.set()
            try:
                await asyncio.sleep(delay)
            finally:
                self.retrying -= 1
                if not self.ordered:
                    self._running += 1

    async def _decide(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        """The first opinion of the hooks, then of parking; "retry" without one."""
        deciders: list[_Decider] = [h.on_failure for h in self._on_failure]
        if self._parking is not None:
            deciders.append(self._parking.on_failure)
        for decide in deciders:
            try:
                decision = await decide(batch, error, attempts)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("destination %s: on_failure hook failed; retrying", self.name)
                return "retry"
            if decision is None:
                continue
            if decision not in ("retry", "parked"):
                log.error("destination %s: on_failure returned %r; retrying", self.name, decision)
                return "retry"
            return decision
        return "retry"

    def _finished(self, events: Sequence[Event], *, parked: bool) -> None:
        for hook in self._on_finished:
            try:
                hook.on_finished(events, parked=parked)
            except Exception:
                log.exception(
                    "destination %s: %s.on_finished failed", self.name, type(hook).__name__
                )

    def _complete(
        self, batch: list[Event], *, parked: bool, take_next: bool = False
    ) -> list[Event] | None:
        """``batch`` is finished. With ``take_next``: the next batch the
        calling task delivers (:meth:`_next_batch`), or None."""
        if self._parking is not None:
            self._parking.wake()  # the store gets the first go at the freed slot
        if self._pipelined is not None:
            self._placed(batch)
            self._batches -= 1
        self._buffer.done(batch)
        if parked:
            self.parked_total += len(batch)
        else:
            self.delivered_total += len(batch)
        self._finished(batch, parked=parked)
        following = self._next_batch() if take_next else None
        if following is None:
            self._wake.set()
        if self._drain_waiters and not self._unfinished():
            self._resolve_drain()
        return following

    def _resolve_drain(self) -> None:
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    def __repr__(self) -> str:
        return (
            f"<Destination {self.name!r} buffered={self.buffered_events}"
            f" in_flight={self.in_flight} delivered={self.delivered_total}>"
        )
