"""Delivery to one destination: buffer -> batches -> ``sink.deliver`` -> retry.

A :class:`Destination` owns one :mod:`buffer <walrelay.pipeline.buffer>` and
one scheduler task. The scheduler wakes when an event arrives or a batch
finishes, takes the events that may start now (see
:class:`~walrelay.pipeline.buffer.KeyedBuffer`), cuts them into batches of at
most ``sink.batch_size`` and runs one asyncio task per batch in flight.

Limits:

* unordered sinks: at most ``max_in_flight`` *events* in flight (so a batch
  holds at most ``min(sink.batch_size, max_in_flight)`` events);
* ordered sinks (``sink.ordered``): exactly one batch in flight, batches cut
  strictly in id order, each up to ``sink.batch_size`` events;
  ``max_in_flight`` does not apply.

Failures: a batch whose ``deliver`` raises :class:`~walrelay.errors.SinkError`
keeps its keys (so nothing later of the same keys overtakes it) and is retried
*as a whole* in memory, after :class:`~walrelay.pipeline.backoff.Backoff`
(exponential, full jitter, ``retry_after`` honoured). Retrying the whole batch
is the simplest correct thing: sinks are idempotent per event id, and a batch
never holds two events of one key unless the sink is ordered. Any other
exception from a sink is a bug in the sink: it is logged with its traceback
and treated like a transient failure, so the events are never lost.

Before each retry the ``on_failure(batch, error, attempts)`` hook decides
``"retry"`` (the default) or ``"parked"``: the latter means the hook stored the
batch durably elsewhere (the retry store), and the batch then counts as
finished (keys released, ``on_finished`` called).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.buffer import EventBuffer, make_buffer
from walrelay.sinks.base import Sink

__all__ = ["Destination", "FailureDecision", "OnFailure", "OnFinished"]

log = logging.getLogger(__name__)

FailureDecision = Literal["retry", "parked"]
OnFinished = Callable[[Sequence[Event]], None]
OnFailure = Callable[[Sequence[Event], BaseException, int], Awaitable[FailureDecision]]


def _ignore(batch: Sequence[Event]) -> None:
    return None


class Destination:
    """One destination: bounded buffer, scheduler task, batches in flight.

    ``on_finished(batch)`` is called exactly once per event (in batches), when
    the event was delivered or parked; the engine passes it on to the
    :class:`~walrelay.pipeline.lsn.LsnTracker`. It must not raise (if it does,
    the error is logged and delivery goes on).
    """

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        max_in_flight: int = 1,
        max_buffer_bytes: int = 64 << 20,
        backoff: Backoff | None = None,
        on_finished: OnFinished | None = None,
        on_failure: OnFailure | None = None,
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
        self._on_finished = on_finished or _ignore
        self._on_failure = on_failure
        self._buffer: EventBuffer = make_buffer(self.ordered, max_buffer_bytes)
        self._wake = asyncio.Event()
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

    # -- feeding ----------------------------------------------------------------

    def try_put(self, event: Event) -> bool:
        """Hand an event over if it fits now, without waiting (the hot path)."""
        if self._buffer.try_push(event):
            self._wake.set()
            return True
        return False

    async def put(self, event: Event) -> None:
        """Hand an event over (in id order). Waits while the buffer is full."""
        buffer = self._buffer
        if not buffer.try_push(event):
            await buffer.put(event)
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
        if not self._buffer.count:
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
        return not self._buffer.count

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
            self._dispatch()

    def _dispatch(self) -> None:
        buffer = self._buffer
        if self.ordered:
            if not buffer.in_flight:
                batch = buffer.take(self._batch_size)
                if batch:
                    self._spawn(batch)
            return
        room = self.max_in_flight - buffer.in_flight
        batch_size = self._batch_size
        while room > 0:
            batch = buffer.take(min(room, batch_size))
            if not batch:
                break
            room -= len(batch)
            self._spawn(batch)

    def _spawn(self, batch: list[Event]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

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
        deliver = self.sink.deliver
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
                self._complete(batch, parked=False)
                return
            attempts += 1
            self.failures_total += 1
            self.last_error = f"{type(error).__name__}: {error}"
            if await self._decide(batch, error, attempts) == "parked":
                self._complete(batch, parked=True)
                return
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
            try:
                await asyncio.sleep(delay)
            finally:
                self.retrying -= 1

    async def _decide(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision:
        if self._on_failure is None:
            return "retry"
        try:
            decision = await self._on_failure(batch, error, attempts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("destination %s: on_failure hook failed; retrying", self.name)
            return "retry"
        if decision not in ("retry", "parked"):
            log.error("destination %s: on_failure returned %r; retrying", self.name, decision)
            return "retry"
        return decision

    def _complete(self, batch: list[Event], *, parked: bool) -> None:
        self._buffer.done(batch)
        if parked:
            self.parked_total += len(batch)
        else:
            self.delivered_total += len(batch)
        try:
            self._on_finished(batch)
        except Exception:
            log.exception("destination %s: on_finished callback failed", self.name)
        self._wake.set()
        if self._drain_waiters and not self._buffer.count:
            self._resolve_drain()

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
