"""Safe offsets: the Kafka analogue of the safe LSN (:mod:`walrelay.pipeline.lsn`).

A worker may commit a partition's offset only past records whose events are
finished -- delivered, or durably parked -- at every destination. Per
partition, :class:`OffsetTracker` keeps the consumed records still pending
(offset -> events outstanding, in offset order) and derives the *safe
offset*: the lowest pending offset, or the next offset to read when nothing
is pending. That is the offset to commit (Kafka's committed offset is the
next record to read).

Pure bookkeeping, no I/O. Each assignment of a partition gets a new epoch:
events of an earlier assignment that finish late (a revoked partition's
abandoned deliveries) carry the old epoch and are ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["OffsetTracker", "Origin", "OriginMap", "PartitionOffsets", "TopicPartition"]

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one consumed record came from: partition, assignment epoch, offset."""

    tp: TopicPartition
    epoch: int
    offset: int


@dataclass(slots=True)
class PartitionOffsets:
    """One assigned partition's pending records and positions."""

    epoch: int
    # The next offset to read (one past the last consumed record); None until
    # the first record or a known start position.
    next: int | None = None
    committed: int | None = None
    high_watermark: int | None = None
    # offset -> events not yet finished, in offset order (records are added in order).
    pending: dict[int, int] = field(default_factory=dict)
    # offset -> the record's timestamp (epoch seconds), for the lag in seconds.
    pending_times: dict[int, float] = field(default_factory=dict)
    consumed_total: int = 0
    # Being revoked: its events not yet at a sink are dropped (the next owner reads them).
    revoking: bool = False

    @property
    def safe(self) -> int | None:
        """The offset that is safe to commit, or None when nothing was read yet."""
        for offset in self.pending:
            return offset
        return self.next

    @property
    def lag(self) -> int | None:
        """Records not yet finished: high watermark minus the safe offset."""
        safe = self.safe
        if self.high_watermark is None or safe is None:
            return None
        return max(0, self.high_watermark - safe)


class OffsetTracker:
    """Pending records per assigned partition, and their safe offsets."""

    def __init__(self) -> None:
        self.partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._epochs = 0

    def assign(self, tp: TopicPartition, start: int | None = None) -> int:
        """``tp`` was assigned (reading resumes at ``start`` when known): its epoch."""
        self._epochs += 1
        self.partitions[tp] = PartitionOffsets(self._epochs, next=start, committed=start)
        return self._epochs

    def revoke(self, tp: TopicPartition) -> PartitionOffsets | None:
        """Forget ``tp``; events of it that finish later are ignored."""
        return self.partitions.pop(tp, None)

    def owns(self, origin: Origin) -> bool:
        """True while ``origin``'s partition is assigned in the same epoch."""
        part = self.partitions.get(origin.tp)
        return part is not None and part.epoch == origin.epoch

    def sends(self, origin: Origin) -> bool:
        """True while an event of ``origin`` may still go to a sink: owned, and
        its partition not being revoked."""
        part = self.partitions.get(origin.tp)
        return part is not None and part.epoch == origin.epoch and not part.revoking

    def start_revoking(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            part = self.partitions.get(tp)
            if part is not None:
                part.revoking = True

    def consumed(self, origin: Origin, events: int) -> None:
        """A record was read and handed to the destinations as ``events`` events
        (0: no destination wants it; it is finished at once)."""
        part = self.partitions.get(origin.tp)
        if part is None or part.epoch != origin.epoch:
            raise ValueError(f"consumed: partition {origin.tp} is not assigned in that epoch")
        offset = origin.offset
        if part.next is not None and offset < part.next:
            raise ValueError(
                f"consumed: offset {offset} of {origin.tp} after {part.next - 1}:"
                " records must be added in offset order"
            )
        part.next = offset + 1
        part.consumed_total += 1
        if events > 0:
            part.pending[offset] = events
        elif events < 0:
            raise ValueError(f"consumed: negative event count {events}")

    def finish(self, origin: Origin) -> bool:
        """One event of the record is finished. False: the partition was revoked
        (or reassigned) since, and the call is ignored."""
        part = self.partitions.get(origin.tp)
        if part is None or part.epoch != origin.epoch:
            return False
        left = part.pending.get(origin.offset)
        if left is None:
            raise ValueError(f"finish: offset {origin.offset} of {origin.tp} is not pending")
        if left == 1:
            del part.pending[origin.offset]
            part.pending_times.pop(origin.offset, None)
        else:
            part.pending[origin.offset] = left - 1
        return True

    def safe(self, tp: TopicPartition) -> int | None:
        part = self.partitions.get(tp)
        return None if part is None else part.safe

    def to_commit(
        self, tps: list[TopicPartition] | None = None
    ) -> list[tuple[TopicPartition, int]]:
        """Partitions (all, or ``tps``) whose safe offset moved past the last commit."""
        out = []
        for tp in self.partitions if tps is None else tps:
            part = self.partitions.get(tp)
            if part is None:
                continue
            safe = part.safe
            if safe is not None and (part.committed is None or safe > part.committed):
                out.append((tp, safe))
        return out

    def to_commit_after(self, finishing: Mapping[Origin, int]) -> list[tuple[TopicPartition, int]]:
        """Like :meth:`to_commit`, for every partition, as if the ``finishing``
        events (origin -> events of that record) were finished already: the
        offsets a transaction that delivers them may commit with them."""
        done: dict[TopicPartition, dict[int, int]] = {}
        for origin, n in finishing.items():
            part = self.partitions.get(origin.tp)
            if part is not None and part.epoch == origin.epoch:
                by_offset = done.setdefault(origin.tp, {})
                by_offset[origin.offset] = by_offset.get(origin.offset, 0) + n
        out = []
        for tp, part in self.partitions.items():
            finished = done.get(tp, {})
            safe = part.next
            for offset, left in part.pending.items():
                if left > finished.get(offset, 0):
                    safe = offset
                    break
            if safe is not None and (part.committed is None or safe > part.committed):
                out.append((tp, safe))
        return out

    def committed(self, tp: TopicPartition, offset: int) -> None:
        part = self.partitions.get(tp)
        if part is not None and (part.committed is None or offset > part.committed):
            part.committed = offset

    def pending_events(self, tps: list[TopicPartition] | None = None) -> int:
        return sum(
            sum(p.pending.values()) for tp, p in self.partitions.items() if tps is None or tp in tps
        )


class OriginMap:
    """Which record each delivered event came from, per destination.

    An event is found by (commit LSN, seq, table): a destination's router
    (outbox) may hand the scheduler a new object, but keeps those. A FIFO
    per id covers the same event read twice (a relay in ``at_least_once``
    mode); a destination finishes one key's events in order.
    """

    def __init__(self) -> None:
        self._by_dest: dict[str, dict[tuple[int, int, str], deque[Origin]]] = {}

    def add(self, destination: str, ident: tuple[int, int, str], origin: Origin) -> None:
        by_id = self._by_dest.setdefault(destination, {})
        queue = by_id.get(ident)
        if queue is None:
            by_id[ident] = deque((origin,))
        else:
            queue.append(origin)

    def pop(self, destination: str, ident: tuple[int, int, str]) -> Origin | None:
        by_id = self._by_dest.get(destination)
        if by_id is None:
            return None
        queue = by_id.get(ident)
        if queue is None:
            return None
        origin = queue.popleft()
        if not queue:
            del by_id[ident]
        return origin

    def nth(self, destination: str, ident: tuple[int, int, str], n: int) -> Origin | None:
        """The ``n``-th (from 0) record still unfinished that carried ``ident``."""
        by_id = self._by_dest.get(destination)
        queue = None if by_id is None else by_id.get(ident)
        return queue[n] if queue is not None and n < len(queue) else None

    def peek(self, destination: str, ident: tuple[int, int, str]) -> Origin | None:
        by_id = self._by_dest.get(destination)
        queue = None if by_id is None else by_id.get(ident)
        return queue[0] if queue else None
