"""Delivery hooks: what happens around a destination's deliveries, besides scheduling.

The scheduler (:mod:`walrelay.pipeline.scheduler`) only decides which events
go out when. Everything cross-cutting -- the dedup ledger, parking's verdict
on a failure, the LSN tracker's accounting, latency metrics, failpoints --
hangs off it as a :class:`DeliveryHook`, as dramatiq's middleware hangs off
its broker. Every method is a no-op by default, so a hook overrides only what
it is about.

Order: a destination's hooks run in list order for ``before_send`` and
``on_finished``, and in reverse order for ``after_send`` (the hook that went
first before the send goes last after it, as nested wrappers would), so the
ledger, listed first, checks before anything else and records last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from walrelay import failpoints
from walrelay.model import Event

__all__ = ["DeliveryHook", "FailpointHook", "FailureDecision", "overriding"]

FailureDecision = Literal["retry", "parked"]


class DeliveryHook:
    """One cross-cutting concern of a destination's deliveries (no-op base)."""

    async def open(self) -> None:
        """Called once before the destination's first delivery."""

    async def close(self) -> None:
        """Called once after the destination stopped."""

    async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
        """The events of a batch still to send (a ledger drops replays).

        Waits rather than raises while something it needs is unavailable:
        a raise here fails the batch like a failed send.
        """
        return events

    async def after_send(self, events: Sequence[Event]) -> None:
        """The sink took ``events`` (what ``before_send`` left of the batch)."""

    async def on_failure(
        self, batch: Sequence[Event], error: BaseException, attempts: int
    ) -> FailureDecision | None:
        """A send failed: ``"parked"`` when this hook stored the batch durably
        (it then counts as finished), ``"retry"`` to insist on retrying, None
        for no opinion. The first hook with an opinion decides."""
        return None

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        """``events`` are finished -- delivered, or durably parked -- exactly
        once each. Must not raise (an error is logged and delivery goes on)."""


def overriding(hooks: Sequence[DeliveryHook], method: str) -> tuple[DeliveryHook, ...]:
    """The hooks whose class overrides ``method``: a destination calls only
    those, so a no-op default costs nothing per batch."""
    default = getattr(DeliveryHook, method)
    return tuple(h for h in hooks if getattr(type(h), method) is not default)


class FailpointHook(DeliveryHook):
    """The named failpoints of the delivery path (see :mod:`walrelay.failpoints`).

    Put it after the ledger hook: ``sink.before_send`` is then hit once the
    ledger said "not delivered yet", and ``sink.after_send`` before the
    ledger records the ids.
    """

    async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
        if events:
            failpoints.hit(failpoints.SINK_BEFORE_SEND)
        return events

    async def after_send(self, events: Sequence[Event]) -> None:
        if events:
            failpoints.hit(failpoints.SINK_AFTER_SEND)

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        failpoints.hit(failpoints.PIPELINE_AFTER_FINISH)
