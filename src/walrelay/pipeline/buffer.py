"""Where an event waits: one buffer per destination, bounded in bytes.

A buffer holds every event a destination has been given and not yet finished
(waiting *and* in flight), in message id order, and decides which events may
start now. It is synchronous and pure except for :meth:`EventBuffer.put`,
which waits while the buffer is full: that is the backpressure that stops the
engine reading the replication socket. Nothing is ever dropped.

Two orderings:

:class:`KeyedBuffer`
    Per-key order. An event may start when every earlier event sharing one of
    its keys has finished; events with different keys go in parallel. This is
    exactly the rule "scan in id order, skip events whose keys are busy, and a
    skipped event blocks all of its keys for the rest of the scan", but kept
    incrementally instead of by scanning: each key has a FIFO of the events
    holding it, and an event is *ready* when it is at the head of all its
    keys' FIFOs. So there is no scan window and no rescans: a hot key blocking
    a long tail of the buffer costs O(1) per event, not O(buffer) per
    completion. Ready events start in id order (oldest first, which also lets
    the confirmed LSN advance soonest).

    Events with no key are barriers (TRUNCATE): a barrier starts alone once
    everything before it has finished, and events after it are held back
    (not even looked at) until it has finished.

:class:`OrderedBuffer`
    Exact id order for sinks that ask for it (``Sink.ordered``): batches are
    cut from the head of a FIFO; a barrier still goes in a batch of its own.

Cost per event on the fast path (a key nobody else holds): one dict insert and
one deque append on :meth:`push`, one deque pop on :meth:`take`, one dict
delete on :meth:`done`. The key FIFO of a key held by one event is the event
itself; a deque is only made when a second event of the same key arrives.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Sequence

from walrelay import model
from walrelay.model import Event

__all__ = ["BufferClosed", "EventBuffer", "KeyedBuffer", "OrderedBuffer", "make_buffer"]


class BufferClosed(RuntimeError):
    """``put`` on a buffer whose destination was stopped."""


class EventBuffer:
    """Byte accounting and backpressure shared by both orderings.

    ``max_bytes`` bounds the sum of ``event.size`` over all events held
    (waiting and in flight). An event is admitted when it fits, or when the
    buffer is empty, so one event larger than the whole bound still goes
    through instead of deadlocking. Waiting ``put`` calls are admitted in
    FIFO order.
    """

    __slots__ = ("_closed", "_putters", "count", "in_flight", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0  # sum of event.size over events held
        self.count = 0  # events held: waiting + in flight
        self.in_flight = 0  # events handed out by take() and not yet done()
        self._putters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._closed = False

    # -- admission --------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        """True while some ``put`` is waiting for space."""
        return bool(self._putters)

    def try_push(self, event: Event) -> bool:
        """Admit ``event`` if it fits now (and nobody is queued before it)."""
        if self._putters or self._closed:
            return False
        # event.size without the property call for an event without a route
        # (nearly all): the accounting runs twice per event.
        size = len(event.body) + model.EVENT_OVERHEAD_BYTES if event.route is None else event.size
        nbytes = self.nbytes
        if nbytes and nbytes + size > self.max_bytes:
            return False
        self.nbytes = nbytes + size
        self.count += 1
        self._push(event)
        return True

    async def put(self, event: Event) -> None:
        """Admit ``event``, waiting while the buffer is full."""
        if self.try_push(event):
            return
        if self._closed:
            raise BufferClosed("the destination was stopped")
        size = event.size
        fut = asyncio.get_running_loop().create_future()
        entry = (size, fut)
        self._putters.append(entry)
        try:
            while True:
                await fut
                if self._closed:
                    raise BufferClosed("the destination was stopped")
                if self._fits(size):
                    break
                # Woken but beaten to the space: wait again, still first in line.
                fut = asyncio.get_running_loop().create_future()
                entry = (size, fut)
                self._putters[0] = entry
        except BaseException:
            self._forget(entry)
            raise
        self._putters.popleft()
        self.nbytes += size
        self.count += 1
        self._push(event)
        self._wake_putter()  # the next one in line may fit too

    def push(self, event: Event) -> None:
        """Admit ``event`` regardless of the bound (tests, replays)."""
        self.nbytes += event.size
        self.count += 1
        self._push(event)

    def close(self) -> None:
        """Refuse further puts and fail the waiting ones with BufferClosed."""
        self._closed = True
        for _, fut in self._putters:
            if not fut.done():
                fut.set_result(None)

    def _fits(self, size: int) -> bool:
        nbytes = self.nbytes
        return not nbytes or nbytes + size <= self.max_bytes

    def _wake_putter(self) -> None:
        if self._putters:
            size, fut = self._putters[0]
            if not fut.done() and self._fits(size):
                fut.set_result(None)

    def _forget(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        putters = self._putters
        was_first = bool(putters) and putters[0] is entry
        try:
            putters.remove(entry)
        except ValueError:  # pragma: no cover - defensive
            return
        if was_first:
            self._wake_putter()

    def _freed(self, batch: Sequence[Event]) -> None:
        n = len(batch)
        self.count -= n
        self.in_flight -= n
        self.nbytes -= sum(
            [
                len(event.body) + model.EVENT_OVERHEAD_BYTES if event.route is None else event.size
                for event in batch
            ]
        )
        if self._putters:
            self._wake_putter()

    # -- the ordering, implemented by subclasses --------------------------------

    def _push(self, event: Event) -> None:
        raise NotImplementedError

    def take(self, limit: int) -> list[Event]:
        """Up to ``limit`` events that may start now, in id order; they are in
        flight until :meth:`done`. An empty list when nothing may start."""
        raise NotImplementedError

    def done(self, batch: Sequence[Event]) -> None:
        """A batch returned by :meth:`take` finished: release it."""
        raise NotImplementedError


class OrderedBuffer(EventBuffer):
    """Strict id order: batches are cut from the head; barriers go alone.

    The caller keeps one batch in flight at a time (that is what ``ordered``
    means); ``take`` does not check it.
    """

    __slots__ = ("_barriers", "_fifo")

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._fifo: deque[Event] = deque()
        self._barriers = 0  # barriers waiting in the FIFO

    def _push(self, event: Event) -> None:
        self._fifo.append(event)
        if not event.keys:
            self._barriers += 1

    def take(self, limit: int) -> list[Event]:
        fifo = self._fifo
        if not fifo or limit <= 0:
            return []
        popleft = fifo.popleft
        if not self._barriers:
            batch = [popleft() for _ in range(min(limit, len(fifo)))]
        elif not fifo[0].keys:
            self._barriers -= 1
            batch = [popleft()]
        else:
            batch = []
            while fifo and len(batch) < limit and fifo[0].keys:
                batch.append(popleft())
        self.in_flight += len(batch)
        return batch

    def done(self, batch: Sequence[Event]) -> None:
        self._freed(batch)


_KeyQueue = Event | deque[Event]


def _unique(keys: tuple[str, ...]) -> tuple[str, ...]:
    if len(keys) == 2 and keys[0] != keys[1]:
        return keys
    return tuple(dict.fromkeys(keys))


class KeyedBuffer(EventBuffer):
    """Per-key order with parallelism across keys, and barriers.

    ``take`` returns events whose keys no earlier unfinished event holds; the
    caller bounds how many are in flight.
    """

    __slots__ = (
        "_barrier",
        "_barrier_out",
        "_held",
        "_keys",
        "_ready",
        "_registered",
        "_unblocked",
    )

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        # key -> the events holding it, oldest first (head may be in flight).
        # A single holder is stored as the event itself (no deque).
        self._keys: dict[str, _KeyQueue] = {}
        # Events ready on arrival (no earlier holder of their keys), id order.
        self._ready: deque[Event] = deque()
        # Events that became ready when a predecessor finished: a heap by id.
        self._unblocked: list[tuple[int, int, int, Event]] = []
        self._registered = 0  # keyed events admitted and not done
        self._barrier: Event | None = None  # the first barrier not yet done
        self._barrier_out = False  # ... and it is in flight
        self._held: deque[Event] = deque()  # events after that barrier

    def _push(self, event: Event) -> None:
        if self._barrier is not None:
            self._held.append(event)
            return
        keys = event.keys
        key_queues = self._keys
        if len(keys) == 1:
            key = keys[0]
            queue = key_queues.get(key)
            if queue is None:
                key_queues[key] = event
                self._ready.append(event)
            elif isinstance(queue, deque):
                queue.append(event)
            else:
                key_queues[key] = deque((queue, event))
            self._registered += 1
        elif not keys:
            self._barrier = event
        else:
            ready = True
            for key in _unique(keys):
                queue = key_queues.get(key)
                if queue is None:
                    key_queues[key] = event
                    continue
                ready = False
                if isinstance(queue, deque):
                    queue.append(event)
                else:
                    key_queues[key] = deque((queue, event))
            if ready:
                self._ready.append(event)
            self._registered += 1

    def take(self, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        barrier = self._barrier
        if barrier is not None and not self._registered:
            if self._barrier_out:
                return []
            self._barrier_out = True
            self.in_flight += 1
            return [barrier]
        ready = self._ready
        heap = self._unblocked
        if not heap:
            if not ready:
                return []
            popleft = ready.popleft
            batch = [popleft() for _ in range(min(limit, len(ready)))]
        else:
            batch = []
            while len(batch) < limit:
                if heap:
                    if ready:
                        first = ready[0]
                        top = heap[0]
                        if first.commit_lsn < top[0] or (
                            first.commit_lsn == top[0] and first.seq < top[1]
                        ):
                            batch.append(ready.popleft())
                            continue
                    batch.append(heapq.heappop(heap)[3])
                elif ready:
                    batch.append(ready.popleft())
                else:
                    break
        self.in_flight += len(batch)
        return batch

    def done(self, batch: Sequence[Event]) -> None:
        key_queues = self._keys
        barrier_done = False
        keyed = 0
        for event in batch:
            keys = event.keys
            if len(keys) == 1:
                keyed += 1
                key = keys[0]
                queue = key_queues[key]
                if queue is event:
                    del key_queues[key]
                else:
                    self._release(key, queue, event)
            elif not keys:
                barrier_done = True
            else:
                keyed += 1
                for key in _unique(keys):
                    queue = key_queues[key]
                    if queue is event:
                        del key_queues[key]
                    else:
                        self._release(key, queue, event)
        self._registered -= keyed
        self._freed(batch)
        if barrier_done:
            self._barrier = None
            self._barrier_out = False
            held = self._held
            while held and self._barrier is None:
                self._push(held.popleft())

    def _release(self, key: str, queue: _KeyQueue, event: Event) -> None:
        """``event`` (head of ``key``'s FIFO ``queue``) finished; maybe unblock the next."""
        assert isinstance(queue, deque) and queue[0] is event, "events finished out of key order"
        queue.popleft()
        head = queue[0]
        if len(queue) == 1:
            self._keys[key] = head
        keys = head.keys
        if len(keys) > 1:
            key_queues = self._keys
            for other in keys:
                if other == key:
                    continue
                queue = key_queues[other]
                if queue is not head and (not isinstance(queue, deque) or queue[0] is not head):
                    return  # still waiting behind an earlier holder of another key
        heapq.heappush(self._unblocked, (head.commit_lsn, head.seq, id(head), head))

    # -- introspection (tests, metrics) -------------------------------------------

    @property
    def keys_held(self) -> int:
        """Distinct keys held by waiting or in-flight events."""
        return len(self._keys)


def make_buffer(ordered: bool, max_bytes: int) -> EventBuffer:
    return OrderedBuffer(max_bytes) if ordered else KeyedBuffer(max_bytes)
