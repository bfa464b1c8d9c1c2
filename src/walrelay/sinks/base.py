"""The one small interface every sink implements, and what a sink is built from.

A sink type is registered once, in :data:`walrelay.config.SINK_TYPES`: its
config model and its class (see :mod:`walrelay.sinks.registry`). The class
builds itself with ``from_config(config, context)`` (:class:`SinkClass`).

Batches with mixed outcomes
---------------------------

A sink that sees one outcome per event (Kafka, webhook, NATS, Redis,
RabbitMQ, PostgreSQL) may find, in one batch, events the destination rejected
for good (*permanent*: a 400, a record too large, a constraint violation)
beside events that failed for a while (*transient*: a timeout, a 503, a lost
connection). ``deliver`` raises one error for the batch, and every sink picks
it the same way (:func:`walrelay.sinks.common.batch_error`):

* **any transient failure makes the batch transient**: the pipeline retries
  the whole batch (same event ids, so what already arrived is dropped as a
  duplicate or skipped), and the events that only had bad luck get through;
* **only when every failure left is permanent is the batch permanent**: it is
  parked at once (``failed:``), dead after ``permanent_attempts``.

So nothing is parked that a retry would have delivered, and a permanent
rejection is reported as such as soon as it is the only thing in the way.
``retry_after`` is the longest any transient failure asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

from walrelay.model import Event

__all__ = ["PipelinedSink", "Sink", "SinkClass", "SinkContext", "is_pipelined"]


@runtime_checkable
class Sink(Protocol):
    """Delivers batches of events to one destination.

    ``deliver`` is all-or-nothing from the pipeline's point of view: if it
    raises :class:`walrelay.errors.SinkError` the whole batch is retried (with
    the same event ids, so an idempotent receiver can drop a resend); see the
    module docstring for which error a batch with mixed outcomes raises.

    ``batch_size`` caps how many events one ``deliver`` call gets. An
    unordered sink may also have ``max_batches`` (the PostgreSQL sink: its
    connections): the scheduler then cuts a batch only when fewer than that
    many are in flight, so events that arrive meanwhile fill the next one
    instead of queueing in many small batches.
    ``ordered`` asks the scheduler for one batch in flight at a time, so the
    sink sees events in exact id order (a :class:`PipelinedSink` gets the next
    batch once the last one is placed).
    ``transactional`` says that no event can ever show up twice downstream,
    however often it is delivered again (after a retry, a crash, a replay
    from the slot): the destination itself drops a repeated id (Kafka
    transactions with a checkpoint, JetStream's ``Nats-Msg-Id``, Redis stream
    ids, PostgreSQL's applied-events table, the file's high-water mark). Such
    a sink needs no dedup ledger in front of it
    (:func:`walrelay.pipeline.ledger.wrap_sink`); the others get one.
    """

    batch_size: int
    ordered: bool
    transactional: bool

    async def open(self) -> None: ...

    async def deliver(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...


class PipelinedSink(Sink, Protocol):
    """An ordered sink whose delivery has an ordered part and a slow part
    (``pipelined = True`` says so; a wrapper such as the engine's WaitingSink
    does not).

    ``place(events)`` returns once the batch's place in the destination is
    fixed (the file sink: written), with an awaitable that completes when
    the batch is delivered (the file sink: an ``fsync`` that began after the
    write succeeded) or raises :class:`walrelay.errors.SinkError`. The
    scheduler hands over the next batch as soon as ``place`` returns, so the
    next write overlaps this one's ``fsync``, and counts a batch as delivered
    only when its awaitable completes. A ``place`` that raises has placed
    nothing: no later batch is placed until it is retried and succeeds. A
    batch retried after its awaitable failed may already be in place; the
    sink must then skip it and still wait for durability. Batches whose
    awaitables failed are each retried on their own: the sink must refuse
    (raise, placing nothing) one that would overtake an earlier failed batch.
    Kafka's exactly_once sink places batches into one open transaction and
    commits it when full or when the scheduler is :meth:`caught_up`.
    """

    pipelined: Literal[True]

    async def place(self, events: Sequence[Event]) -> Awaitable[None]: ...

    def caught_up(self) -> None:
        """The scheduler has nothing more to place for now (its buffer is
        empty, or :data:`~walrelay.pipeline.scheduler.PIPELINE_DEPTH` batches
        wait): a sink that gathers placed batches (Kafka's transaction) should
        finish what it holds rather than wait for more."""


def is_pipelined(sink: Sink) -> TypeGuard[PipelinedSink]:
    """Whether ``sink`` declares itself a :class:`PipelinedSink`."""
    return getattr(sink, "pipelined", False) is True


@dataclass(frozen=True, slots=True)
class SinkContext:
    """Where a sink runs: the slot and destination it serves (they name the Kafka
    transactional id and checkpoint, the PostgreSQL applied-events rows), and the
    tables routed to it (broker sinks check or create their topics, streams and
    exchanges for them at start-up)."""

    slot: str = "walrelay"
    destination: str = "default"
    tables: tuple[str, ...] = ()


class SinkClass(Protocol):
    """A sink class as the registry uses it."""

    def from_config(self, config: Any, context: SinkContext, /) -> Sink:
        """A sink for ``config`` (the sink's own config model, already validated)."""
        ...
