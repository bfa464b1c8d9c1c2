"""Retry delays: exponential backoff with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempt`` (1 = the first retry).

    The ceiling grows ``initial * multiplier ** (attempt - 1)`` up to
    ``maximum``; the delay is drawn uniformly from ``[0, ceiling]`` ("full
    jitter", so many keys failing at once do not retry in lockstep).

    A destination that says when to come back (``SinkError.retry_after``, e.g.
    an HTTP 429/503 ``Retry-After``) is honoured exactly, but never beyond
    ``maximum``: an outage must not stall a destination for longer than the
    configured ceiling between attempts.
    """

    initial: float = 0.2
    multiplier: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0 or self.multiplier < 1:
            raise ValueError(
                f"backoff needs initial >= 0, maximum >= 0 and multiplier >= 1, got {self}"
            )

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry ``attempt``."""
        if attempt <= 1:
            return min(self.initial, self.maximum)
        try:
            value = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.maximum
        return min(value, self.maximum)

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry ``attempt``."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        ceiling = self.ceiling(attempt)
        uniform = rng.uniform if rng is not None else random.uniform
        return uniform(0.0, ceiling)
