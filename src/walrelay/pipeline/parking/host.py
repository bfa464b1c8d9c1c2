"""What parking needs from the destination it parks for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from walrelay.model import Event

__all__ = ["ParkingHost"]


class ParkingHost(Protocol):
    """The destination, as its parking sees it (handed over when parking is made;
    :class:`walrelay.pipeline.scheduler.Destination` is one)."""

    def finish_diverted(self, events: Sequence[Event]) -> None:
        """Diverted ``events`` are durably parked: they count as finished."""
        ...

    def reserve(self, n: int) -> int:
        """Take up to ``n`` of the destination's in-flight slots; returns how many."""
        ...

    def release(self, n: int) -> None:
        """Give back ``n`` slots taken with :meth:`reserve`."""
        ...

    async def deliver_parked(self, events: Sequence[Event]) -> None:
        """Deliver parked ``events`` through the destination's sink (raises as it does)."""
        ...

    def wake(self) -> None:
        """Run the destination's scheduler again (parking has room, or a key is free)."""
        ...
