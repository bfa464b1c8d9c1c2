"""The delivery hook that retries failed transforms.

An event a step failed on reaches its destination failed
(:attr:`Event.failure <walrelay.model.Event>`). Its first send attempt fails
with that error at once -- nothing is sent -- so the scheduler retries and
then parks it like any failed delivery (in its key's order; other keys
flow). Every later attempt, in memory or from the parked-events table, runs
the chain again from the step that failed: the event goes out when the step
succeeds (or counts as finished when it drops the event), and fails again
with the new traceback when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.transforms.chain import RESUME_PREFIX, StepError, TransformChain

__all__ = ["ResumeHook"]


class ResumeHook(DeliveryHook):
    """Runs the remaining steps of failed events before they are sent."""

    def __init__(
        self, chain: TransformChain, finish: Callable[[Event], Event] | None = None
    ) -> None:
        self.chain = chain
        # The destination's output format, applied to an event once its steps succeed.
        self.finish = finish

    async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
        if not any(e.body.startswith(RESUME_PREFIX) for e in events):
            return events
        out: list[Event] = []
        for event in events:
            if not event.body.startswith(RESUME_PREFIX):
                out.append(event)
                continue
            failure = event.failure
            if failure is not None:
                event.failure = None  # the next attempt runs the step again
                raise SinkError(failure)
            try:
                resumed = self.chain.resume(event)
            except StepError as e:
                raise SinkError(str(e)) from None
            if resumed is not None:
                out.append(resumed if self.finish is None else self.finish(resumed))
        return out
