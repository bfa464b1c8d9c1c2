"""An in-memory sink for tests and benchmarks of the pipeline.

It records what it delivered, in order of completion, and can be told to fail
(for some events, or the next N calls) and to take its time (a fixed delay, a
random one, or any coroutine), so tests can shake the scheduler.

    sink = MemorySink(batch_size=100, delay=(0.0, 0.002), seed=1)
    sink.fail_keys.add("orders:7")        # every batch holding that key fails
    ...
    sink.fail_keys.clear()                # ... until healed
    await sink.wait_delivered(1000)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence

from walrelay.errors import SinkError
from walrelay.model import Event

__all__ = ["MemorySink"]

Delay = float | tuple[float, float] | Callable[[Sequence[Event]], Awaitable[None]]


class MemorySink:
    """Satisfies :class:`walrelay.sinks.base.Sink`.

    Failure injection (checked after the delay, the batch fails as a whole):

    * ``fail_when(event) -> bool``: fail any batch holding a matching event;
    * ``fail_keys`` / ``fail_ids``: mutable sets, same with keys / event ids;
    * ``fail_times``: the next N ``deliver`` calls fail (counts down);
    * ``error``: makes the exception to raise (default :class:`SinkError`
      with ``retry_after``), e.g. ``lambda batch: RuntimeError("bug")``.

    ``delay``: seconds, a ``(low, high)`` range drawn with ``random.Random(seed)``,
    or an async callable given the batch. None: ``deliver`` never suspends.

    ``track_keys=True`` records in :attr:`key_overlaps` every key that was
    being delivered by two concurrent calls (must stay empty under the
    scheduler: a key is in at most one batch in flight).
    """

    def __init__(
        self,
        *,
        batch_size: int = 100,
        ordered: bool = False,
        delay: Delay | None = None,
        seed: int | None = None,
        fail_when: Callable[[Event], bool] | None = None,
        fail_keys: Iterable[str] = (),
        fail_ids: Iterable[str] = (),
        fail_times: int = 0,
        retry_after: float | None = None,
        error: Callable[[Sequence[Event]], BaseException] | None = None,
        track_keys: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.ordered = ordered
        # Keeps every copy it is given: behind the dedup ledger, like a webhook.
        self.transactional = False
        self.delay = delay
        self.fail_when = fail_when
        self.fail_keys: set[str] = set(fail_keys)
        self.fail_ids: set[str] = set(fail_ids)
        self.fail_times = fail_times
        self.retry_after = retry_after
        self.error = error
        self.track_keys = track_keys
        self._rng = random.Random(seed)

        self.delivered: list[Event] = []  # successes, in order of completion
        self.batches: list[list[Event]] = []  # successful batches, same order
        self.calls = 0  # deliver calls
        self.failures = 0  # deliver calls that raised
        self.active = 0  # deliver calls running now
        self.max_active = 0  # most deliver calls ever running at once
        self.key_overlaps: list[str] = []
        self.opened = False
        self.closed = False
        self._busy_keys: set[str] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def open(self) -> None:
        self.opened = True
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def deliver(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.active += 1
        if self.active > self.max_active:
            self.max_active = self.active
        claimed: list[str] = []
        try:
            if self.track_keys:
                busy = self._busy_keys
                for key in {key for event in events for key in event.keys}:
                    if key in busy:
                        self.key_overlaps.append(key)
                    else:
                        busy.add(key)
                        claimed.append(key)
            if self.delay is not None:
                await self._sleep(events)
            if self._should_fail(events):
                self.failures += 1
                if self.error is not None:
                    raise self.error(events)
                raise SinkError(
                    f"injected failure delivering {len(events)} event(s) from {events[0].id}",
                    retry_after=self.retry_after,
                )
            self.delivered.extend(events)
            self.batches.append(list(events))
            if self._waiters:
                self._wake_waiters()
        finally:
            self.active -= 1
            if claimed:
                self._busy_keys.difference_update(claimed)

    async def wait_delivered(self, count: int) -> None:
        """Return once at least ``count`` events were delivered."""
        if len(self.delivered) >= count:
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (count, fut)
        self._waiters.append(entry)
        try:
            await fut
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    @property
    def delivered_ids(self) -> list[str]:
        return [event.id for event in self.delivered]

    def _should_fail(self, events: Sequence[Event]) -> bool:
        if self.fail_times > 0:
            self.fail_times -= 1
            return True
        fail_when = self.fail_when
        fail_keys = self.fail_keys
        fail_ids = self.fail_ids
        if fail_when is None and not fail_keys and not fail_ids:
            return False
        for event in events:
            if fail_when is not None and fail_when(event):
                return True
            if fail_keys and not fail_keys.isdisjoint(event.keys):
                return True
            if fail_ids and event.id in fail_ids:
                return True
        return False

    async def _sleep(self, events: Sequence[Event]) -> None:
        delay = self.delay
        if isinstance(delay, tuple):
            low, high = delay
            await asyncio.sleep(self._rng.uniform(low, high))
        elif isinstance(delay, int | float):
            await asyncio.sleep(delay)
        elif delay is not None:
            await delay(events)

    def _wake_waiters(self) -> None:
        n = len(self.delivered)
        for count, fut in self._waiters:
            if count <= n and not fut.done():
                fut.set_result(None)
