"""at_least_once batches wait on the event loop for their delivery reports,
which another thread counts (walrelay.sinks.kafka._Reports)."""

from __future__ import annotations

import asyncio
import threading

import confluent_kafka

from walrelay.sinks.kafka import _Reports


async def test_done_once_every_produced_record_is_reported() -> None:
    reports = _Reports(asyncio.get_running_loop())
    reports.on_delivery(None, "m1")  # a report may come before producing is over
    reports.expect(3)
    await asyncio.sleep(0)
    assert not reports.done.done()
    failed = confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT)
    thread = threading.Thread(target=reports.on_delivery, args=(failed, "m2"))
    thread.start()
    thread.join()
    assert not reports.done.done()
    reports.on_delivery(None, "m3")
    await asyncio.wait_for(reports.done, 5)
    assert reports.produced == 3
    assert reports.failures == [(failed, "m2")]


async def test_a_batch_with_nothing_produced_is_done_at_once() -> None:
    reports = _Reports(asyncio.get_running_loop())
    reports.expect(0)
    await asyncio.wait_for(reports.done, 5)


def _report(reports: _Reports, n: int) -> None:
    for i in range(n):
        reports.on_delivery(None, i)


async def test_reports_from_threads_race_the_end_of_producing() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(20):
        reports = _Reports(loop)
        threads = [threading.Thread(target=_report, args=(reports, 500)) for _ in range(4)]
        for t in threads:
            t.start()
        reports.expect(2000)
        for t in threads:
            t.join()
        await asyncio.wait_for(reports.done, 5)
