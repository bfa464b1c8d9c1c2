"""The consumer group's lag, partition by partition, as the brokers see it.

A member's own status knows only its partitions (:mod:`walrelay.worker.offsets`).
This asks the cluster about the whole group -- every partition of its
topics, whoever owns it, on any host, or nobody -- with an admin client:

- the end of each partition: its last stable offset (``list_offsets`` with
  ``read_committed``: what a worker can read; an open relay transaction is
  not lag yet);
- the group's committed offset (``list_consumer_group_offsets``; none yet:
  the partition's earliest offset, where a member starts);
- the owner (``describe_consumer_groups``: the member's client id,
  ``walrelay-<worker name>``).

Lag = end - committed, in records (Kafka counts a transaction's commit
marker as an offset: a partition whose last write was a relay transaction
shows 1 at rest).
Blocking calls: run it in a thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PartitionLag", "read_group_lag"]

_CLIENT_PREFIX = "walrelay-"


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of the group's topics."""

    topic: str
    partition: int
    committed: int | None  # the group's committed offset (None: never committed)
    end: int  # the last stable offset
    lag_records: int
    owner: str | None  # the worker that owns it now (None: nobody)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_group_lag(
    ck: Any, admin: Any, group: str, topics: list[str], timeout: float
) -> list[PartitionLag]:
    """Every partition of ``topics``: the group's committed offset, the end, the
    lag and the owner. Raises ``KafkaException`` when the cluster does not answer."""
    admin_mod = ck.admin
    metadata = admin.list_topics(timeout=timeout)
    tps = [
        ck.TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics and metadata.topics[topic].error is None
        for p in sorted(metadata.topics[topic].partitions)
    ]
    if not tps:
        return []
    committed_request = [ck.ConsumerGroupTopicPartitions(group, tps)]
    committed_future = admin.list_consumer_group_offsets(
        committed_request, request_timeout=timeout
    )[group]
    ends = _offsets(ck, admin, tps, admin_mod.OffsetSpec.latest(), timeout)
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in committed_future.result(timeout).topic_partitions
        if tp.error is None and tp.offset >= 0
    }
    missing = [tp for tp in tps if (tp.topic, tp.partition) not in committed]
    starts = _offsets(ck, admin, missing, admin_mod.OffsetSpec.earliest(), timeout)
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
    owners: dict[tuple[str, int], str] = {}
    for member in description.result(timeout).members:
        name = member.client_id.removeprefix(_CLIENT_PREFIX)
        for tp in member.assignment.topic_partitions if member.assignment else ():
            owners[(tp.topic, tp.partition)] = name
    out = []
    for tp in tps:
        key = (tp.topic, tp.partition)
        end = ends.get(key, 0)
        done = committed.get(key)
        base = done if done is not None else starts.get(key, 0)
        out.append(
            PartitionLag(tp.topic, tp.partition, done, end, max(0, end - base), owners.get(key))
        )
    return out


def _offsets(
    ck: Any, admin: Any, tps: list[Any], spec: Any, timeout: float
) -> dict[tuple[str, int], int]:
    if not tps:
        return {}
    futures = admin.list_offsets(
        {tp: spec for tp in tps},
        isolation_level=ck.IsolationLevel.READ_COMMITTED,
        request_timeout=timeout,
    )
    return {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in futures.items()}
