"""The one small interface every sink implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from walrelay.model import Event


@runtime_checkable
class Sink(Protocol):
    """Delivers batches of events to one destination.

    ``deliver`` is all-or-nothing from the pipeline's point of view: if it
    raises :class:`walrelay.errors.SinkError` the whole batch is retried (with
    the same event ids, so an idempotent receiver can drop a resend).

    ``batch_size`` caps how many events one ``deliver`` call gets.
    ``ordered`` asks the scheduler for one batch in flight at a time, so the
    sink sees events in exact id order (the file sink relies on it).
    """

    batch_size: int
    ordered: bool

    async def open(self) -> None: ...

    async def deliver(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...
