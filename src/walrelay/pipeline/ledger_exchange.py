"""Group commit for a destination's dedup ledger: one round trip carries
everything waiting, checks and records together.

A :class:`~walrelay.pipeline.ledger.LedgerHook` asks the ledger twice per
batch: which ids it already holds (before the send), and to record the ids
sent (after it). With many batches in flight (webhooks: 32 batches of one
event; Kafka at_least_once: 8 of 500) those calls overlap. The
:class:`LedgerExchange` keeps at most one round trip in flight; whatever
arrives meanwhile -- the ids of batches just sent, to record, and of batches
about to be sent, to check -- waits and goes together as the next round
trip. So the record of one group and the check of the next share a round
trip, groups grow by themselves with the load, and a call that comes alone
goes out after one turn of the event loop (no timer, no added wait).

Within one round trip the records go first, then the checks. A batch's
check and its record are never in the same round trip (the record comes
only after the send that the check allowed), so no id can be both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from walrelay.model import Event

__all__ = ["ExchangeCall", "LedgerExchange"]

ExchangeCall = Callable[[list[Event], list[Event]], Awaitable[set[str]]]
"""``call(records, checks)``: record ``records`` (sent), then return the ids
among ``checks`` the ledger holds; one round trip."""


class LedgerExchange:
    """At most one ledger round trip in flight, carrying every check and record
    waiting for it (see the module docstring). Every caller gets the outcome --
    result or error -- of the round trip its events went in."""

    def __init__(self, call: ExchangeCall) -> None:
        self._call = call
        # (is a record, events, the caller's future), in arrival order.
        self._queue: list[tuple[bool, Sequence[Event], asyncio.Future[set[str]]]] = []
        self._task: asyncio.Task[None] | None = None
        # While a round trip is in flight: the callers of ready() waiting for it.
        self._riders: list[asyncio.Future[None]] | None = None
        self.round_trips = 0
        self.bare_round_trips = 0  # carrying no ids: only ready() waited for them
        self.ids = 0  # ids carried (checks and records), over all round trips

    def check(self, events: Sequence[Event]) -> asyncio.Future[set[str]]:
        """Resolves to the ids among ``events`` the ledger holds (possibly more
        ids: of the other batches checked in the same round trip)."""
        return self._enqueue(False, events)

    def record(self, events: Sequence[Event]) -> asyncio.Future[set[str]]:
        """Record ``events`` (already sent) as delivered: resolves once recorded."""
        return self._enqueue(True, events)

    async def ready(self) -> None:
        """Return once the ledger has answered a round trip that ends after this
        call -- the one in flight, or else the next (with no ids of its own) --
        so that nothing goes out while the ledger is unreachable. Raises what
        that round trip raised."""
        riders = self._riders
        if riders is None:
            await self._enqueue(False, ())
            return
        fut = asyncio.get_running_loop().create_future()
        riders.append(fut)
        await fut

    def _enqueue(self, is_record: bool, events: Sequence[Event]) -> asyncio.Future[set[str]]:
        # A future, not a coroutine: one level less to resume per batch.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[set[str]] = loop.create_future()
        self._queue.append((is_record, events, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        while self._queue:
            # One turn of the loop first: the calls that the last answer (or
            # the same wake-up) set off join this round trip instead of the next.
            await asyncio.sleep(0)
            queue, self._queue = self._queue, []
            group = [item for item in queue if not item[2].done()]  # callers cancelled
            if not group:
                continue
            records = [e for is_record, evs, _ in group if is_record for e in evs]
            checks = [e for is_record, evs, _ in group if not is_record for e in evs]
            self.round_trips += 1
            self.ids += len(records) + len(checks)
            if not records and not checks:
                self.bare_round_trips += 1
            riders: list[asyncio.Future[None]] = []
            self._riders = riders
            try:
                found = await self._call(records, checks)
            except asyncio.CancelledError:
                for fut in [f for _, _, f in group] + riders:
                    fut.cancel()
                raise
            except Exception as e:
                for fut in [f for _, _, f in group] + riders:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                self._riders = None
            for _, _, fut in group:
                if not fut.done():
                    fut.set_result(found)
            for rider in riders:
                if not rider.done():
                    rider.set_result(None)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
