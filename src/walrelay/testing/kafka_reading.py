"""A Kafka consumer for tests and benchmarks that read what a sink wrote."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import Consumer

__all__ = ["reading_consumer"]


def reading_consumer(
    bootstrap: str,
    group: str | None = None,
    *,
    isolation: str = "read_committed",
    eof: bool = False,
) -> Consumer:
    """A consumer (of a group of its own unless ``group`` is given) that never
    commits offsets.

    ``auto.offset.reset`` is ``earliest``: a partition assigned at
    ``OFFSET_BEGINNING`` right after its topic was created can fail its first
    offset lookup (no leader yet), and librdkafka then falls back to that
    setting; with the default (``latest``) the reader would silently skip
    every record written before the lookup was retried."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"reader-{uuid.uuid4()}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": eof,
            "auto.offset.reset": "earliest",
        }
    )
