"""A worker's status document, its `walrelay status` table and its metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from walrelay.engine.delivery import Destinations
from walrelay.worker.config import WorkerKafkaConfig
from walrelay.worker.offsets import OffsetTracker, Origin
from walrelay.worker.status import WorkerStatus, render_worker_status


class FakeWorker:
    """A WorkerView with one partition half delivered."""

    def __init__(self) -> None:
        self.name = "host-42"
        self.kafka = WorkerKafkaConfig(bootstrap="k:9092", group="billing", topics=["cdc.t"])
        self.started = asyncio.Event()
        self.started.set()
        self.member_id: str | None = "m-1"
        self.rebalances = 2
        self.abandoned = 1
        self.not_envelopes = 0
        self.tombstones = 0
        self.destinations = Destinations()
        self.tracker = OffsetTracker()
        epoch = self.tracker.assign(("cdc.t", 3), 10)
        for offset in (10, 11):
            self.tracker.consumed(Origin(("cdc.t", 3), epoch, offset), 1)
        self.tracker.finish(Origin(("cdc.t", 3), epoch, 10))
        self.tracker.partitions[("cdc.t", 3)].high_watermark = 15

    @property
    def stopping(self) -> bool:
        return False

    def partitions_status(self) -> list[dict[str, Any]]:
        part = self.tracker.partitions[("cdc.t", 3)]
        return [
            {
                "topic": "cdc.t",
                "partition": 3,
                "safe_offset": part.safe,
                "committed_offset": part.committed,
                "high_watermark": part.high_watermark,
                "lag_records": part.lag,
                "lag_seconds": 1.5,
                "pending_events": 1,
                "consumed_total": part.consumed_total,
            }
        ]

    def trim_status(self) -> dict[str, Any] | None:
        return {
            "floor": "0/103",
            "floor_lsn": 0x103,
            "replay_floor": "0/180",
            "retention": 600.0,
            "blocked": None,
            "error": None,
        }

    def group_lag_status(self) -> dict[str, Any] | None:
        """Two partitions: this member's, and one nobody owns yet."""
        return {
            "partitions": [
                {
                    "topic": "cdc.t",
                    "partition": 3,
                    "committed": 10,
                    "end": 15,
                    "lag_records": 5,
                    "owner": "host-42",
                },
                {
                    "topic": "cdc.t",
                    "partition": 4,
                    "committed": None,
                    "end": 7,
                    "lag_records": 7,
                    "owner": None,
                },
            ],
            "lag_records": 12,
            "as_of": time.time() - 2,
            "error": None,
        }


def test_status_names_group_partitions_and_safe_offsets() -> None:
    doc = WorkerStatus(FakeWorker()).status()
    assert (doc["source"], doc["group"], doc["state"]) == ("worker", "billing", "running")
    [part] = doc["partitions"]
    assert (part["safe_offset"], part["committed_offset"], part["lag_records"]) == (11, 10, 4)
    text = render_worker_status([doc])
    assert "worker host-42 of group billing (running): 1 partition(s)" in text
    assert "cdc.t[3]" in text and " 11 " in text


def test_metrics_per_partition() -> None:
    body, content_type = WorkerStatus(FakeWorker()).metrics()
    text = body.decode()
    assert content_type.startswith("text/plain")
    labels = 'group="billing",partition="3",topic="cdc.t"'
    assert f"walrelay_worker_partition_lag_records{{{labels}}} 4.0" in text
    assert f"walrelay_worker_partition_safe_offset{{{labels}}} 11.0" in text
    assert f"walrelay_worker_partition_lag_seconds{{{labels}}} 1.5" in text
    assert 'walrelay_worker_assigned_partitions{group="billing"} 1.0' in text
    assert 'walrelay_worker_tombstones_total{group="billing"} 0.0' in text
    assert 'walrelay_worker_skipped_records_total{group="billing"} 0.0' in text


def test_the_whole_groups_lag_in_status_and_metrics() -> None:
    """Every partition of the group's topics, whoever owns it: in the status
    document, in `walrelay status` (once, after the processes) and in /metrics."""
    worker = FakeWorker()
    doc = WorkerStatus(worker).status()
    assert doc["group_lag"]["lag_records"] == 12
    text = render_worker_status([doc, doc])
    assert text.count("group billing: lag 12 record(s) over 2 partition(s), read 2") == 1
    rows = [line.split(maxsplit=4) for line in text.splitlines() if line.startswith("  cdc.t[")]
    # The owner: the local process whose partitions hold it.
    assert ["cdc.t[4]", "-", "7", "7", "(not on this host)"] in rows
    assert ["cdc.t[3]", "10", "15", "5", "host-42"] in rows
    metrics = WorkerStatus(worker).metrics()[0].decode()
    labels = 'group="billing",partition="4",topic="cdc.t"'
    assert f"walrelay_worker_group_lag_records{{{labels}}} 7.0" in metrics


def test_the_dedup_rows_trim_floor_in_status_and_metrics() -> None:
    worker = FakeWorker()
    doc = WorkerStatus(worker).status()
    assert doc["trim"]["floor"] == "0/103"
    text = render_worker_status([doc])
    assert "dedup rows: trimmed below 0/103 (the group's replay floor 0/180, held 10.0min)" in text
    metrics = WorkerStatus(worker).metrics()[0].decode()
    assert 'walrelay_worker_trim_floor_lsn{group="billing"} 259.0' in metrics
    doc["trim"] = {**doc["trim"], "floor": None, "blocked": "cdc.t[4] has records and no"}
    assert "dedup rows: not trimmed yet: cdc.t[4] has records and no" in render_worker_status([doc])
