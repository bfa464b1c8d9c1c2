"""A broker and consumer-group settings for tests and benchmarks of
``walrelay worker`` in which a SIGKILLed or stalled member must lose its
partitions within seconds, not Kafka's default 45."""

from __future__ import annotations

from typing import Any

__all__ = ["QUICK_BROKER", "quick_group"]

QUICK_BROKER: dict[str, str] = {"group.min.session.timeout.ms": "1000"}
"""Broker settings (``KafkaServer(config=...)``) that allow :func:`quick_group`."""


def quick_group(bootstrap: str, group: str, topics: list[str], **more: Any) -> dict[str, Any]:
    """``worker.kafka``: a group whose members time out after 2 s (``more``:
    further settings, e.g. ``commit_interval``)."""
    return {
        "bootstrap": bootstrap,
        "group": group,
        "topics": topics,
        "session_timeout": 2,
        "heartbeat_interval": 0.3,
        **more,
    }
