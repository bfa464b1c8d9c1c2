"""The consumer group's lag, partition by partition, as the brokers see it.

A member's own status knows only its partitions (:mod:`walrelay.worker.offsets`).
This asks the cluster about the whole group -- every partition of its
topics, whoever owns it, on any host, or nobody -- through a plain consumer
of the group that never joins it (``committed`` and watermark queries only):

- the end of each partition: its last stable offset (the consumer reads
  with ``read_committed``, so the watermark query answers with it: what a
  worker can read; an open relay transaction is not lag yet);
- the group's committed offset (none yet: the partition's earliest offset,
  where a member starts).

Lag = end - committed, in records (Kafka counts a transaction's commit
marker as an offset: a partition whose last write was a relay transaction
shows 1 at rest). The admin client's group APIs would also name the owners,
but ``list_consumer_group_offsets`` crashed a worker process (SIGSEGV) while
its group was forming (confluent-kafka-python issue 1982), so they are not
used; a member knows its own partitions. Blocking calls: run it in a thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PartitionLag", "read_group_lag"]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of the group's topics."""

    topic: str
    partition: int
    committed: int | None  # the group's committed offset (None: never committed)
    end: int  # the last stable offset
    lag_records: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def topic_partitions(ck: Any, consumer: Any, topics: list[str], timeout: float) -> list[Any]:
    """Every partition (``TopicPartition``) of those of ``topics`` that exist."""
    metadata = consumer.list_topics(timeout=timeout)
    return [
        ck.TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics and metadata.topics[topic].error is None
        for p in sorted(metadata.topics[topic].partitions)
    ]


def read_group_lag(ck: Any, consumer: Any, topics: list[str], timeout: float) -> list[PartitionLag]:
    """Every partition of ``topics``: the group's committed offset, the end and
    the lag. ``consumer``: a read_committed consumer of the group that is not
    subscribed. Raises ``KafkaException`` when the cluster does not answer."""
    tps = topic_partitions(ck, consumer, topics, timeout)
    if not tps:
        return []
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in consumer.committed(tps, timeout=timeout)
        if tp.error is None and tp.offset >= 0
    }
    out = []
    for tp in tps:
        low, end = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        done = committed.get((tp.topic, tp.partition))
        base = done if done is not None else low
        out.append(PartitionLag(tp.topic, tp.partition, done, end, max(0, end - base)))
    return out
