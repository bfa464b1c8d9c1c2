"""Kafka -> Kafka exactly once: the consume-transform-produce transaction.

A ``walrelay worker`` whose destination is a Kafka sink in ``exactly_once``
mode uses :class:`KafkaOffsetsSink`: the transactional
:class:`~walrelay.sinks.kafka.KafkaSink` (same producer, batching, errors,
fencing on start), except that what each transaction makes durable with its
records is not a checkpoint record but the *consumed offsets*:
``send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())``
(Kafka's KIP-98/KIP-447 loop). The output records and the group's offsets
become visible together or not at all, so a worker killed at any point
leaves the next owner of a partition exactly where the output stops.

Why this is exact, and what it needs from the worker (:class:`ConsumedOffsets`):

- The sink is ``ordered``: one transaction at a time, events in the order
  the worker consumed them. A batch is therefore a prefix, per partition,
  of the records not yet finished, and the offset committed with it (the
  partition's safe offset once the batch is finished) is exactly past the
  batch's records.
- Offsets and the group metadata are taken on the event loop, in the same
  step that drops events of partitions the worker no longer owns
  (:meth:`ConsumedOffsets.prepare`). While the worker owns a partition, the
  group cannot have moved past the generation of that ownership (the revoke
  callback, which forgets the partition, runs before the member rejoins), so
  a transaction that commits offsets for a partition the group gave away
  since is refused by the coordinator (``ILLEGAL_GENERATION``: KIP-447
  fencing) and aborted; and a new owner's offset fetch
  (``require_stable``, librdkafka's default under ``read_committed``) waits
  for an open transaction of ours to end.
- The transactional id is the sink's id plus the member's stable name
  (``<id>.<group>.<host>.<process index>``), so a restarted worker's
  ``init_transactions`` aborts the transaction its killed predecessor left
  open instead of leaving the partitions blocked until
  ``transaction.timeout.ms``.
- A commit whose outcome is unknown (it timed out) is settled before
  anything else is committed -- its batch retried, or an offsets-only commit
  (which could otherwise take the group's offsets back below it): a new
  producer's ``init_transactions`` finishes or aborts it, then the group's
  committed offsets (:meth:`ConsumedOffsets.group_offsets`) say whether it
  committed; if so its events (by id and key) are not sent again -- the
  relay's sink reads its checkpoint for the same question. A transaction
  that moved no offset cannot be told this way: its batch is sent again.
- No ledger and no checkpoint: ids are not compared (a worker's events
  interleave partitions, so ids do not increase), and the worker must have
  this as its only destination (the group has one offset per partition).

Offsets that move without a batch (records no destination wanted, a final
commit on revoke or stop) are committed by :meth:`KafkaOffsetsSink.commit_offsets`,
an offsets-only transaction, on the sink's one thread: never behind a
transaction that committed further (offsets only go forward here).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from walrelay.errors import SinkError, SinkUnavailable
from walrelay.model import Event
from walrelay.sinks.base import SinkContext
from walrelay.sinks.kafka import KafkaSink

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from walrelay.config import KafkaSinkConfig

__all__ = ["ConsumedOffsets", "KafkaOffsetsSink", "Offsets"]

log = logging.getLogger("walrelay.sinks.kafka")

Offsets = list[tuple[str, int, int]]
"""(topic, partition, offset to commit: the next record to read)."""


@dataclass(frozen=True)
class _Doubt:
    """A transaction whose commit failed with an unknown outcome: the offsets it
    committed and which events (id and grouping key) it held."""

    offsets: Offsets
    events: frozenset[tuple[str, tuple[str, ...]]]


def _identities(events: Sequence[Event]) -> frozenset[tuple[str, tuple[str, ...]]]:
    return frozenset((e.id, tuple(e.keys)) for e in events)


class ConsumedOffsets(Protocol):
    """The worker, as the sink sees it (called on the event loop)."""

    def prepare(self, events: Sequence[Event]) -> tuple[Sequence[Event], Offsets, Any]:
        """The events still to send (those of partitions the worker still owns),
        the offsets to commit once they are, and the consumer's group metadata."""
        ...

    def committed(self, offsets: Offsets) -> None:
        """``offsets`` were committed (in a transaction)."""
        ...

    def group_offsets(
        self, partitions: list[tuple[str, int]], timeout: float
    ) -> dict[tuple[str, int], int]:
        """The group's committed offsets of ``partitions`` (stable: no transaction
        pending), read from the cluster; called on the sink's thread."""
        ...


class KafkaOffsetsSink(KafkaSink):
    """A transactional Kafka sink that commits a consumer group's offsets in
    each transaction (see the module docstring)."""

    uses_checkpoint = False

    def __init__(
        self,
        config: KafkaSinkConfig,
        context: SinkContext,
        *,
        source: ConsumedOffsets,
        member: str,
    ) -> None:
        if config.mode != "exactly_once":
            raise ValueError("KafkaOffsetsSink is the exactly_once mode")
        super().__init__(config, context)
        self.pipelined = False  # deliver(): its offsets are computed for the whole batch
        self.source = source
        self.transactional_id = f"{self.transactional_id}.{member}"
        self._producer_config["transactional.id"] = self.transactional_id
        # One transaction per batch: its offsets are computed for the whole batch.
        self.transaction_interval = math.inf
        self.transaction_bytes = sys.maxsize
        self._sealing: tuple[Offsets, Any] | None = None
        # A transaction whose outcome is unknown (a failed commit), until settled.
        self._in_doubt: _Doubt | None = None
        # One settled as committed: its batch, when retried, is not sent again.
        self._committed_doubt: _Doubt | None = None
        # Per partition, the highest offset this sink has committed (on its thread).
        self._sent: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:
        return f"KafkaOffsetsSink({self.bootstrap!r}, transactional_id={self.transactional_id!r})"

    async def deliver(self, events: Sequence[Event]) -> None:
        todo, offsets, group = self.source.prepare(events)
        if not todo:
            return
        sent = await self._call(self._deliver_with_offsets, todo, offsets, group)
        self.source.committed(sent)

    async def commit_offsets(self, offsets: Offsets, group: Any) -> Offsets:
        """Commit ``offsets`` in a transaction of their own (nothing produced);
        returns those committed (offsets at or below one committed before are
        left out). Raises :class:`~walrelay.errors.SinkError` on failure."""
        if not offsets:
            return []
        sent: Offsets = await self._call(self._offsets_only, offsets, group)
        return sent

    async def _call(self, fn: Any, *args: Any) -> Any:
        executor = self._executor
        if executor is None:
            raise SinkError(f"kafka sink {self.bootstrap}: used before open() or after close()")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    # -- on the sink's thread ---------------------------------------------------------

    def _fresh(self, offsets: Offsets) -> Offsets:
        sent = self._sent
        return [(t, p, o) for t, p, o in offsets if o > sent.get((t, p), -1)]

    def _remember(self, offsets: Offsets) -> None:
        for t, p, o in offsets:
            self._sent[(t, p)] = o

    def _deliver_with_offsets(
        self, events: Sequence[Event], offsets: Offsets, group: Any
    ) -> Offsets:
        if self._in_doubt is not None:
            self._settle()
        done, self._committed_doubt = self._committed_doubt, None
        if done is not None:
            # The batch being retried is in the output already (the checkpoint's
            # job in the relay's sink: the group's offsets said so here).
            left = [e for e in events if (e.id, tuple(e.keys)) not in done.events]
            if not left:
                return done.offsets
            events = left
        fresh = self._fresh(offsets)
        self._sealing = (fresh, group)
        try:
            # Ids do not increase in a worker: nothing is skipped as a replay.
            self._mark = None
            self._deliver_transactional(events)
        except SinkError:
            if self._needs_reset and fresh:
                # Perhaps committed (a commit that timed out): settled before
                # anything else is committed (_settle).
                self._in_doubt = _Doubt(fresh, _identities(events))
            raise
        finally:
            self._sealing = None
            self._mark = None
        self._remember(fresh)
        return fresh

    def _settle(self) -> None:
        """Finish the transaction in doubt and learn whether it committed: a new
        producer's ``init_transactions`` commits or aborts it, then the group's
        offsets tell. Committed: its offsets count as sent (an offsets-only
        commit must not take the group back below them) and its batch, when
        retried, is not sent again. Done before anything else is committed."""
        doubt = self._in_doubt
        assert doubt is not None
        self._reset_transactional()
        try:
            done = self.source.group_offsets(
                [(t, p) for t, p, _ in doubt.offsets], self.delivery_timeout
            )
        except Exception as exc:
            raise SinkUnavailable(
                f"kafka sink {self.bootstrap}: cannot read the group's offsets to settle a"
                f" transaction: {exc}"
            ) from None
        self._in_doubt = None
        if not all(done.get((t, p), -1) >= o for t, p, o in doubt.offsets):
            return
        self._remember(doubt.offsets)
        self._committed_doubt = doubt
        log.info(
            "kafka sink %s: the transaction whose commit failed was committed after all;"
            " its batch is not sent again",
            self.bootstrap,
        )

    def _seal(self, producer: Producer, last: Event, on_delivery: Any) -> None:
        sealing = self._sealing
        assert sealing is not None  # set by _deliver_with_offsets
        offsets, group = sealing
        if offsets:
            self._send_offsets(producer, offsets, group)

    def _send_offsets(self, producer: Producer, offsets: Offsets, group: Any) -> None:
        ck = self._ck
        producer.send_offsets_to_transaction(
            [ck.TopicPartition(t, p, o) for t, p, o in offsets], group, self.delivery_timeout
        )

    def _offsets_only(self, offsets: Offsets, group: Any) -> Offsets:
        if self._in_doubt is not None:
            self._settle()
        fresh = self._fresh(offsets)
        if not fresh:
            return []
        ck = self._ck
        if self._needs_reset or self._fatal or self._producer is None:
            self._reset_transactional()
        producer = self._producer
        assert producer is not None
        committing = False
        try:
            producer.begin_transaction()
            self._send_offsets(producer, fresh, group)
            committing = True
            producer.commit_transaction(self.delivery_timeout)
        except ck.KafkaException as exc:
            err = exc.args[0]
            if not committing or err.txn_requires_abort():
                try:
                    producer.abort_transaction(self.delivery_timeout)
                except Exception:
                    self._needs_reset = True
            else:
                self._needs_reset = True  # outcome unknown: init_transactions settles it
            if err.fatal():
                self._needs_reset = True
            raise SinkUnavailable(
                f"kafka sink {self.bootstrap}: committing consumed offsets failed: {err.str()}"
            ) from None
        self._remember(fresh)
        return fresh

    def _read_checkpoint(self) -> None:
        return None  # no checkpoint: the group's committed offsets are the progress
